//! Mount propagation of a container's mounts (`shared`, `slave`, `private`, `unbindable` and
//! their recursive `r` forms).
//!
//! libcontainer 0.7 parses these options as flags to clear and its bind path (open_tree,
//! mount_setattr, move_mount) sets no propagation, so every bind came out as a copy of its
//! source's; its `rootfsPropagation` knows only the plain forms and refuses the `r` forms
//! containerd writes ("failed to prepare rootfs"). The agent therefore takes these options out
//! of the spec it hands libcontainer and applies them itself, from a `createContainer` hook that
//! is its own binary: that hook runs in the container's mount namespace after its mounts and
//! before `pivot_root`, where runc applies them too.

use std::os::fd::{AsRawFd, OwnedFd};

use anyhow::{anyhow, bail, Context, Result};
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use serde_json::{json, Value};

/// `hull-agent propagate ROOTFS (DESTINATION OPTION)…`: the hook's command line.
pub const ARG: &str = "propagate";
/// The agent's own binary in the guest (what the hook runs).
const AGENT_PATH: &str = "/init";

/// One propagation option: the mount_setattr(2) propagation type and whether it applies to
/// the mounts below too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Propagation {
    kind: u64,
    recursive: bool,
}

fn parse(option: &str) -> Option<Propagation> {
    let (recursive, plain) = match option.strip_prefix('r') {
        Some(rest) if matches!(rest, "shared" | "slave" | "private" | "unbindable") => (true, rest),
        _ => (false, option),
    };
    let kind = match plain {
        "shared" => libc::MS_SHARED,
        "slave" => libc::MS_SLAVE,
        "private" => libc::MS_PRIVATE,
        "unbindable" => libc::MS_UNBINDABLE,
        _ => return None,
    };
    Some(Propagation { kind, recursive })
}

/// Rewrite `spec` (as the host sent it) for libcontainer: propagation options leave the mounts
/// and go to a first `createContainer` hook that applies them in order, and
/// `linux.rootfsPropagation` takes the plain form libcontainer knows (it applies the root's
/// propagation recursively whichever form is given, as runc does).
pub fn move_into_hook(spec: &mut Value) -> Result<()> {
    if let Some(root) = spec.pointer_mut("/linux/rootfsPropagation") {
        let given = root.as_str().unwrap_or_default().to_string();
        let plain = match parse(&given) {
            Some(p) if p.recursive => &given[1..],
            Some(_) => &given,
            None => bail!(
                "linux.rootfsPropagation {given:?} is none of shared, slave, private, unbindable (or their r forms)"
            ),
        };
        *root = json!(plain);
    }
    let rootfs = spec.pointer("/root/path").and_then(Value::as_str).unwrap_or_default().to_string();
    let mut args = vec![json!("hull-agent"), json!(ARG), json!(rootfs)];
    for mount in spec["mounts"].as_array_mut().into_iter().flatten() {
        let destination = mount["destination"].as_str().unwrap_or_default().to_string();
        let Some(options) = mount["options"].as_array_mut() else { continue };
        options.retain(|o| {
            let Some(option) = o.as_str().filter(|o| parse(o).is_some()) else { return true };
            args.push(json!(destination));
            args.push(json!(option));
            false
        });
    }
    if args.len() > 3 {
        if !spec["hooks"].is_object() {
            spec["hooks"] = json!({});
        }
        let hooks = &mut spec["hooks"]["createContainer"];
        if !hooks.is_array() {
            *hooks = json!([]);
        }
        let hook = json!({"path": AGENT_PATH, "args": args});
        hooks.as_array_mut().expect("an array now").insert(0, hook);
    }
    Ok(())
}

/// Open each directory bind source under the share once, here in the agent's namespace.
///
/// virtiofsd announces the host's mounts inside the share (a bundle's bind sources are such
/// mounts) and the guest mounts them on first access, in the namespace that touches them.
/// Reached first from the container's namespace, which is a slave, the automount came out
/// private and so did every bind of it; reached from here, under the agent's shared mounts, it
/// joins a peer group and the container's binds become slaves of it, as binds are under runc.
pub fn mount_bind_sources(spec: &Value, share: &str) {
    for mount in spec["mounts"].as_array().into_iter().flatten() {
        let is_bind = mount["type"] == "bind"
            || mount["options"].as_array().is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"));
        let Some(source) = mount["source"].as_str().filter(|s| is_bind && s.starts_with(share)) else { continue };
        // O_DIRECTORY: a file source fails at once (files are no submounts), a FIFO never
        // blocks the open.
        let _ = nix::fcntl::open(source, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty());
    }
}

/// The hook: apply each `DESTINATION OPTION` pair to the mount at DESTINATION inside ROOTFS.
pub fn main(args: &[String]) -> i32 {
    match apply(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("hull-agent: mount propagation: {e:#}");
            1
        }
    }
}

fn apply(args: &[String]) -> Result<()> {
    let (rootfs, pairs) = args.split_first().ok_or_else(|| anyhow!("usage: {ARG} ROOTFS (DESTINATION OPTION)…"))?;
    if pairs.len() % 2 != 0 {
        bail!("usage: {ARG} ROOTFS (DESTINATION OPTION)…");
    }
    let root = nix::fcntl::open(rootfs.as_str(), OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
        .with_context(|| format!("opening the rootfs {rootfs}"))?;
    for pair in pairs.chunks(2) {
        let (destination, option) = (&pair[0], &pair[1]);
        let propagation = parse(option).ok_or_else(|| anyhow!("mount {destination}: unknown option {option:?}"))?;
        // Resolved inside the rootfs: a symlink in the image cannot send us elsewhere.
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let target = openat2(&root, destination.trim_start_matches('/'), how)
            .with_context(|| format!("mount {destination}: resolving it in the rootfs"))?;
        set_propagation(&target, propagation).with_context(|| format!("mount {destination}: {option}"))?;
    }
    Ok(())
}

/// `struct mount_attr` of mount_setattr(2) (linux/mount.h, MOUNT_ATTR_SIZE_VER0).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn set_propagation(target: &OwnedFd, propagation: Propagation) -> nix::Result<()> {
    let attr = MountAttr { attr_set: 0, attr_clr: 0, propagation: propagation.kind, userns_fd: 0 };
    let mut flags = libc::AT_EMPTY_PATH;
    if propagation.recursive {
        flags |= libc::AT_RECURSIVE;
    }
    // SAFETY: mount_setattr reads `size_of::<MountAttr>()` bytes from `attr`, which lives for
    // the call, and the empty path is a NUL-terminated static string; `target` is an open fd.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            target.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    nix::errno::Errno::result(rc).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_go_to_a_first_hook_in_order_and_the_root_gets_the_plain_form() {
        let mut spec = json!({
            "root": {"path": "/run/hull/share/containers/c/rootfs"},
            "linux": {"rootfsPropagation": "rslave"},
            "hooks": {"createContainer": [{"path": "/bin/mine"}]},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/a", "type": "bind", "source": "/s", "options": ["rbind", "rshared", "ro"]},
                {"destination": "/b", "type": "bind", "source": "/s", "options": ["bind", "private", "unbindable"]},
            ]
        });
        move_into_hook(&mut spec).unwrap();
        assert_eq!(spec["linux"]["rootfsPropagation"], "slave");
        assert_eq!(spec["mounts"][1]["options"], json!(["rbind", "ro"]));
        assert_eq!(spec["mounts"][2]["options"], json!(["bind"]));
        let hooks = spec["hooks"]["createContainer"].as_array().unwrap();
        assert_eq!(hooks.len(), 2);
        assert_eq!(hooks[1]["path"], "/bin/mine");
        assert_eq!(hooks[0]["path"], AGENT_PATH);
        assert_eq!(
            hooks[0]["args"],
            json!([
                "hull-agent",
                ARG,
                "/run/hull/share/containers/c/rootfs",
                "/a",
                "rshared",
                "/b",
                "private",
                "/b",
                "unbindable"
            ])
        );
    }

    #[test]
    fn nothing_to_do_adds_no_hook_and_bad_root_propagation_is_refused() {
        let mut spec = json!({"root": {"path": "/r"}, "mounts": [{"destination": "/a", "options": ["bind"]}]});
        move_into_hook(&mut spec).unwrap();
        assert!(spec.get("hooks").is_none());
        let mut bad = json!({"root": {"path": "/r"}, "linux": {"rootfsPropagation": "rsomething"}});
        let err = move_into_hook(&mut bad).unwrap_err().to_string();
        assert!(err.contains("linux.rootfsPropagation"), "{err}");
    }

    #[test]
    fn parses_every_form() {
        assert_eq!(parse("rslave"), Some(Propagation { kind: libc::MS_SLAVE, recursive: true }));
        assert_eq!(parse("unbindable"), Some(Propagation { kind: libc::MS_UNBINDABLE, recursive: false }));
        assert_eq!(parse("rbind"), None);
        assert_eq!(parse("ro"), None);
    }
}
