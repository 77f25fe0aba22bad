//! Bad input and crashing parts: a clear error, a non-zero exit, nothing left behind, no hang.

use std::process::Stdio;
use std::time::{Duration, Instant};

use hull_tests::{text, Env};

/// Run `hull run` on a bundle path and expect an error mentioning `needle`.
fn expect_error(env: &Env, args: &[&str], needle: &str) {
    let out = env.hull_out(args);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded; stderr: {stderr}");
    assert!(stderr.contains(needle), "{args:?}: error {stderr:?} does not mention {needle:?}");
    env.assert_clean();
}

#[test]
fn missing_bundle() {
    let env = Env::new("nobundle");
    let missing = env.dir.join("does-not-exist");
    expect_error(&env, &["run", "--bundle", missing.to_str().unwrap(), "c1"], "does-not-exist");
}

#[test]
fn missing_config_json() {
    let env = Env::new("noconfig");
    let b = env.bundle("b", &["true"]);
    std::fs::remove_file(b.dir.join("config.json")).unwrap();
    expect_error(&env, &["run", "--bundle", b.path(), "c1"], "config.json");
}

#[test]
fn config_that_is_not_json() {
    let env = Env::new("badjson");
    let b = env.bundle("b", &["true"]);
    std::fs::write(b.dir.join("config.json"), "{ not json").unwrap();
    expect_error(&env, &["run", "--bundle", b.path(), "c1"], "not valid JSON");
}

#[test]
fn config_with_a_wrongly_typed_field_names_the_field() {
    let env = Env::new("badfield");
    let b = env.bundle("b", &["true"]);
    b.edit(|c| c["process"]["user"]["uid"] = "root".into());
    expect_error(&env, &["run", "--bundle", b.path(), "c1"], "process.user.uid");
}

#[test]
fn config_without_oci_version_names_the_field() {
    let env = Env::new("noversion");
    let b = env.bundle("b", &["true"]);
    b.edit(|c| {
        c.as_object_mut().unwrap().remove("ociVersion");
    });
    expect_error(&env, &["run", "--bundle", b.path(), "c1"], "ociVersion");
}

#[test]
fn missing_rootfs() {
    let env = Env::new("norootfs");
    let b = env.bundle("b", &["true"]);
    std::fs::remove_dir_all(b.rootfs()).unwrap();
    expect_error(&env, &["run", "--bundle", b.path(), "c1"], "root.path");
}

#[test]
fn host_network_is_refused() {
    let env = Env::new("hostnet");
    let b = env.bundle("b", &["true"]);
    b.edit(|c| {
        let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
        ns.retain(|n| n["type"] != "network");
    });
    expect_error(&env, &["run", "--bundle", b.path(), "c1"], "network namespace");
}

#[test]
fn invalid_id() {
    let env = Env::new("badid");
    let b = env.bundle("b", &["true"]);
    expect_error(&env, &["run", "--bundle", b.path(), "../escape"], "invalid character");
}

#[test]
fn unknown_id() {
    let env = Env::new("unknownid");
    for verb in ["state", "start", "kill", "delete"] {
        expect_error(&env, &[verb, "nope"], "does not exist");
    }
}

#[test]
fn duplicate_id_is_refused_and_the_first_container_survives() {
    let env = Env::new("dupid");
    let b = env.bundle("b", &["sleep", "300"]);
    let out = env.hull_detached(&["create", "--bundle", b.path(), "c1"]);
    assert!(out.status.success(), "create: {}", text(&out.stderr));
    let out = env.hull_out(&["run", "--bundle", b.path(), "c1"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("already exists"), "{}", text(&out.stderr));
    let state = env.hull_out(&["state", "c1"]);
    assert!(text(&state.stdout).contains("\"created\""), "{}", text(&state.stdout));
    let out = env.hull_out(&["delete", "c1"]);
    assert!(out.status.success(), "delete: {}", text(&out.stderr));
    env.assert_clean();
}

/// Kill the sandbox process whose program contains `victim` in the middle of a `hull run`:
/// the run ends promptly with 255 and an error that calls it `named`.
fn crash_mid_run(name: &str, victim: &str, named: &str) {
    let env = Env::new(name);
    let b = env.bundle("b", &["sh", "-c", "echo up; sleep 300"]);
    let mut child = env
        .hull()
        .args(["run", "--bundle", b.path(), "c1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the container runs (its first line arrives).
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 3];
    std::io::Read::read_exact(&mut stdout, &mut first).expect("container output");
    assert_eq!(&first, b"up\n");

    let pid = env.find_process(victim).unwrap_or_else(|| panic!("no {victim} process found"));
    // SAFETY: plain kill(2) of a process this test's sandbox started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "hull run still running 15 s after {victim} was killed");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(255), "hull run after {victim} died: {stderr}");
    assert!(stderr.contains(named), "error does not name {named}: {stderr:?}");
    env.assert_clean();
}

#[test]
fn killing_the_vmm_ends_the_run_with_an_error() {
    let backend = hull_tests::Backend::current();
    crash_mid_run("killvmm", backend.vmm(), backend.vmm_in_errors());
}

#[test]
fn killing_virtiofsd_ends_the_run_with_an_error() {
    crash_mid_run("killvirtiofsd", "virtiofsd", "virtiofsd");
}

#[test]
fn tmpcopyup_over_a_non_empty_directory_names_the_field() {
    let env = Env::new("tmpcopyup");
    let b = env.bundle("b", &["true"]);
    std::fs::write(b.rootfs().join("etc/motd"), "image content\n").unwrap();
    b.edit(|c| {
        c["mounts"].as_array_mut().unwrap().push(
            serde_json::json!({"destination": "/etc", "type": "tmpfs", "source": "tmpfs", "options": ["tmpcopyup"]}),
        );
    });
    let index = {
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(b.dir.join("config.json")).unwrap()).unwrap();
        config["mounts"].as_array().unwrap().len() - 1
    };
    expect_error(&env, &["run", "--bundle", b.path(), "c"], &format!("mounts[{index}].options"));
}

#[test]
fn create_without_a_process_succeeds_and_start_fails() {
    let env = Env::new("noprocess");
    let b = env.bundle("b", &["true"]);
    b.edit(|c| {
        c.as_object_mut().unwrap().remove("process");
    });
    let out = env.hull_detached(&["create", "--bundle", b.path(), "np"]);
    assert!(out.status.success(), "create without process: {}", text(&out.stderr));
    let state = text(&env.hull_out(&["state", "np"]).stdout);
    assert!(state.contains("\"created\""), "{state}");
    let out = env.hull_out(&["start", "np"]);
    assert!(!out.status.success() && text(&out.stderr).contains("process"), "start: {}", text(&out.stderr));
    assert!(env.hull_out(&["delete", "np"]).status.success(), "a created container deletes without --force");
    env.assert_clean();
}

#[test]
fn malformed_process_json_names_the_file() {
    let env = Env::new("badprocess");
    let b = env.bundle("b", &["sleep", "300"]);
    assert!(env.hull_detached(&["run", "-d", "--bundle", b.path(), "x"]).status.success());
    let bad = env.dir.join("process.json");
    std::fs::write(&bad, "{not json").unwrap();
    let out = env.hull_out(&["exec", "--process", bad.to_str().unwrap(), "x"]);
    assert!(!out.status.success() && text(&out.stderr).contains("process.json"), "{}", text(&out.stderr));
    std::fs::write(&bad, r#"{"args": "sh", "cwd": "/"}"#).unwrap();
    let out = env.hull_out(&["exec", "--process", bad.to_str().unwrap(), "x"]);
    assert!(
        !out.status.success() && text(&out.stderr).contains("args"),
        "a wrongly typed field is named: {}",
        text(&out.stderr)
    );
    assert!(env.hull_out(&["delete", "--force", "x"]).status.success());
    env.assert_clean();
}
