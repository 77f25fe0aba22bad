//! The OCI process settings reach the container inside the guest: user and groups, hostname,
//! environment, cwd, rlimits, capabilities, no_new_privs and the seccomp profile.

use hull_tests::{text, Env};
use serde_json::json;

#[test]
fn process_settings_are_applied_in_the_guest() {
    let env = Env::new("procset");
    let b = env.bundle(
        "b",
        &[
            "sh",
            "-c",
            "id -u; id -g; id -G; hostname; echo $GREETING; pwd; ulimit -n; \
             grep -E '^(CapEff|NoNewPrivs):' /proc/self/status",
        ],
    );
    std::fs::create_dir_all(b.rootfs().join("work")).unwrap();
    b.edit(|c| {
        c["process"]["user"] = json!({"uid": 1000, "gid": 1001, "additionalGids": [2000, 2001]});
        c["hostname"] = json!("inside-vm");
        c["process"]["env"].as_array_mut().unwrap().push(json!("GREETING=hi there"));
        c["process"]["cwd"] = json!("/work");
        c["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 512, "soft": 256}]);
        // Only CAP_KILL (bit 5) for a non-root user: effective set must say exactly that.
        let caps = json!(["CAP_KILL"]);
        c["process"]["capabilities"] =
            json!({"bounding": caps, "effective": caps, "permitted": caps, "inheritable": caps, "ambient": caps});
        c["process"]["noNewPrivileges"] = json!(true);
    });
    let out = env.hull_out(&["run", "--bundle", b.path(), "c1"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "1000", "{stdout}");
    assert_eq!(lines[1], "1001", "{stdout}");
    let mut groups: Vec<&str> = lines[2].split_whitespace().collect();
    groups.sort();
    assert_eq!(groups, ["1001", "2000", "2001"], "{stdout}");
    assert_eq!(lines[3], "inside-vm");
    assert_eq!(lines[4], "hi there");
    assert_eq!(lines[5], "/work");
    assert_eq!(lines[6], "256");
    assert!(stdout.contains("CapEff:\t0000000000000020"), "{stdout}");
    assert!(stdout.contains("NoNewPrivs:\t1"), "{stdout}");
    env.assert_clean();
}

#[test]
fn the_seccomp_profile_is_enforced_in_the_guest() {
    let env = Env::new("seccomp");
    let b = env.bundle("b", &["sh", "-c", "mkdir /tmp/blocked && echo MKDIR-ALLOWED; echo after"]);
    b.edit(|c| {
        c["root"]["readonly"] = json!(false);
        c["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
        });
    });
    let out = env.hull_out(&["run", "--bundle", b.path(), "c1"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert!(!stdout.contains("MKDIR-ALLOWED"), "mkdir was not blocked: {stdout}");
    assert!(stdout.contains("after"), "{stdout}");
    assert!(text(&out.stderr).contains("Operation not permitted"), "{}", text(&out.stderr));
    assert!(!b.rootfs().join("tmp/blocked").exists());
    env.assert_clean();
}

/// The actions and conditions runc's and crun's profiles use, twice: in a container that
/// spells `noNewPrivileges: false` out (libcontainer then loaded the filter after dropping
/// its capabilities: "failed to load seccomp context"), and in one holding CAP_SYS_ADMIN,
/// where a profile blocking `sethostname` must still stop it.
#[test]
fn seccomp_actions_conditions_and_flags_behave_as_under_runc() {
    let env = Env::new("seccomp-actions");
    let script = "mkdir /tmp/x 2>&1; echo mkdir=$?; \
                  kill -0 $$; echo kill0=$?; kill -USR1 $$ 2>/dev/null; echo usr1=$?; \
                  hostname blocked 2>&1; echo hostname=$?; \
                  uname -s; echo uname=$?; \
                  linux32 true; echo personality=$?";
    let profile = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "flags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
             "args": [{"index": 1, "value": 10, "op": "SCMP_CMP_EQ"}]},
            {"names": ["sethostname"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
            {"names": ["uname"], "action": "SCMP_ACT_LOG"},
            {"names": ["personality"], "action": "SCMP_ACT_KILL_PROCESS"}
        ]
    });
    for (name, sys_admin) in [("nnp-false", false), ("sys-admin", true)] {
        let b = env.bundle(name, &["sh", "-c", script]);
        b.edit(|c| {
            c["root"]["readonly"] = json!(false);
            c["linux"]["seccomp"] = profile.clone();
            if sys_admin {
                c["process"].as_object_mut().unwrap().remove("noNewPrivileges");
                for set in ["bounding", "effective", "permitted"] {
                    c["process"]["capabilities"][set].as_array_mut().unwrap().push(json!("CAP_SYS_ADMIN"));
                }
            } else {
                c["process"]["noNewPrivileges"] = json!(false);
            }
        });
        let out = env.hull_out(&["run", "--bundle", b.path(), name]);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{name}: stdout: {stdout} stderr: {}", text(&out.stderr));
        for expected in [
            "Permission denied\nmkdir=1\n",          // errnoRet 13 is EACCES
            "kill0=0\nusr1=1\n",                     // the condition on arg 1 blocks only SIGUSR1
            "Operation not permitted\nhostname=1\n", // by the profile, CAP_SYS_ADMIN or not
            "Linux\nuname=0\n",                      // SCMP_ACT_LOG lets it through
            "personality=159\n",                     // SCMP_ACT_KILL_PROCESS: SIGSYS, 128+31
        ] {
            assert!(stdout.contains(expected), "{name}: expected {expected:?} in:\n{stdout}");
        }
        assert!(!b.rootfs().join("tmp/x").exists());
    }
    env.assert_clean();
}

/// `hull exec` runs under the container's filter, as `runc exec` does (libcontainer 0.7 left
/// the profile out of an exec's spec), whatever the exec's capabilities and no_new_privs.
#[test]
fn exec_runs_under_the_containers_seccomp_profile() {
    let env = Env::new("seccomp-exec");
    let b = env.bundle("b", &["sleep", "600"]);
    b.edit(|c| {
        c["root"]["readonly"] = json!(false);
        c["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]
        });
    });
    let out = env.hull_detached(&["run", "-d", "--bundle", b.path(), "c1"]);
    assert!(out.status.success(), "run -d: {}", text(&out.stderr));
    for extra in [&[][..], &["--no-new-privs"][..], &["--cap", "CAP_SYS_ADMIN"][..]] {
        let mut args = vec!["exec"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["c1", "sh", "-c", "grep Seccomp: /proc/self/status; mkdir /tmp/x; echo mkdir=$?"]);
        let out = env.hull_out(&args);
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{extra:?}: {}", text(&out.stderr));
        assert!(stdout.contains("Seccomp:\t2\n") && stdout.contains("mkdir=1"), "{extra:?}: {stdout}");
        assert!(text(&out.stderr).contains("Permission denied"), "{extra:?}: {}", text(&out.stderr));
    }
    // The exec's capabilities are the container's, not what loading the filter needed.
    let caps = text(&env.hull_out(&["exec", "c1", "sh", "-c", "grep CapEff: /proc/self/status /proc/1/status"]).stdout);
    let values: Vec<&str> = caps.lines().filter_map(|l| l.split('\t').nth(1)).collect();
    assert!(values.len() == 2 && values[0] == values[1], "exec and init capabilities differ: {caps}");
    let exec_caps = u64::from_str_radix(values[0], 16).unwrap();
    assert_eq!(exec_caps & (1 << 21), 0, "the exec kept CAP_SYS_ADMIN: {caps}");
    assert!(!b.rootfs().join("tmp/x").exists());
    let out = env.hull_out(&["delete", "--force", "c1"]);
    assert!(out.status.success());

    // With no_new_privs the filter is loaded last, after the capabilities are dropped, as
    // runc does: a profile that denies capset still lets such an exec run.
    let b = env.bundle("capset", &["sleep", "600"]);
    b.edit(|c| {
        c["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["capset"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
        });
    });
    let out = env.hull_detached(&["run", "-d", "--bundle", b.path(), "c2"]);
    assert!(out.status.success(), "run -d: {}", text(&out.stderr));
    let out = env.hull_out(&["exec", "--no-new-privs", "c2", "grep", "Seccomp:", "/proc/self/status"]);
    assert!(out.status.success(), "exec --no-new-privs under a capset-denying profile: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "Seccomp:\t2\n");
    let out = env.hull_out(&["delete", "--force", "c2"]);
    assert!(out.status.success());
    env.assert_clean();
}

/// Seccomp user notification would hand the guest kernel's listener fd to a host agent:
/// refused at create, naming the field, with nothing left behind.
#[test]
fn seccomp_notify_is_refused_naming_the_field() {
    let env = Env::new("seccomp-notify");
    for (field, edit) in [
        ("linux.seccomp.listenerPath", json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/agent.sock"})),
        (
            "linux.seccomp.syscalls[0].action",
            json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]}),
        ),
    ] {
        let b = env.bundle("b", &["true"]);
        b.edit(|c| c["linux"]["seccomp"] = edit.clone());
        let out = env.hull_out(&["run", "--bundle", b.path(), "c1"]);
        assert!(!out.status.success());
        let err = text(&out.stderr);
        assert!(err.contains(field) && err.contains("cannot cross the VM"), "{err}");
        env.assert_clean();
        std::fs::remove_dir_all(&b.dir).unwrap();
    }
}

#[test]
fn bind_mounts_reach_the_guest_rw_ro_and_files() {
    let env = Env::new("binds");
    let rw = env.dir.join("rw-dir");
    let ro = env.dir.join("ro-dir");
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::write(ro.join("data"), "read me").unwrap();
    let file = env.dir.join("single.conf");
    std::fs::write(&file, "key=value\n").unwrap();
    let b = env.bundle(
        "b",
        &["sh", "-c", "echo written > /mnt/rw/out; cat /mnt/ro/data; echo; touch /mnt/ro/x 2>&1 || echo RO-REFUSED; cat /etc/single.conf"],
    );
    std::fs::create_dir_all(b.rootfs().join("mnt")).unwrap();
    b.edit(|c| {
        let mounts = c["mounts"].as_array_mut().unwrap();
        mounts.push(json!({"destination": "/mnt/rw", "type": "bind", "source": rw, "options": ["rbind", "rw"]}));
        mounts.push(json!({"destination": "/mnt/ro", "type": "bind", "source": ro, "options": ["rbind", "ro"]}));
        mounts.push(
            json!({"destination": "/etc/single.conf", "type": "bind", "source": file, "options": ["bind", "ro"]}),
        );
    });
    let out = env.hull_out(&["run", "--bundle", b.path(), "c1"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(rw.join("out")).unwrap(), "written\n");
    assert!(stdout.contains("read me"), "{stdout}");
    assert!(stdout.contains("RO-REFUSED"), "{stdout}");
    assert!(!ro.join("x").exists());
    assert!(stdout.contains("key=value"), "{stdout}");
    env.assert_clean();
}

/// The guest is not trusted to honour `ro`: a container allowed to remount (CAP_SYS_ADMIN)
/// lifts the guest-side flag, and the host-side read-only bind still refuses the write.
#[test]
fn a_read_only_bind_stays_read_only_when_the_guest_remounts_it() {
    let env = Env::new("ro-hostile");
    let ro = env.dir.join("ro-dir");
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::write(ro.join("data"), "original").unwrap();
    let b = env.bundle(
        "b",
        &["sh", "-c", "mount -o remount,rw,bind /mnt/ro && echo REMOUNTED; echo changed > /mnt/ro/data 2>&1 || echo WRITE-REFUSED; touch /mnt/ro/new 2>&1 || echo CREATE-REFUSED"],
    );
    std::fs::create_dir_all(b.rootfs().join("mnt")).unwrap();
    b.edit(|c| {
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/mnt/ro", "type": "bind", "source": ro, "options": ["rbind", "ro"]}));
        for set in ["bounding", "effective", "permitted"] {
            c["process"]["capabilities"][set].as_array_mut().unwrap().push(json!("CAP_SYS_ADMIN"));
        }
    });
    let out = env.hull_out(&["run", "--bundle", b.path(), "c1"]);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("REMOUNTED"), "the guest-side remount did not happen: {stdout} {}", text(&out.stderr));
    assert!(stdout.contains("WRITE-REFUSED") && stdout.contains("CREATE-REFUSED"), "{stdout}");
    assert_eq!(std::fs::read_to_string(ro.join("data")).unwrap(), "original");
    assert!(!ro.join("new").exists());
    env.assert_clean();
}

#[test]
fn a_bind_mount_of_a_socket_is_refused_naming_the_mount() {
    let env = Env::new("bindsock");
    let sock_path = env.dir.join("app.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
    let b = env.bundle("b", &["true"]);
    b.edit(|c| {
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/app.sock", "type": "bind", "source": sock_path, "options": ["bind"]}));
    });
    let out = env.hull_out(&["run", "--bundle", b.path(), "c1"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("mounts[") && stderr.contains("socket"), "{stderr}");
    env.assert_clean();
}
