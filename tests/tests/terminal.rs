//! Terminals: `--console-socket` (how podman's conmon asks), a foreground `run` on the
//! caller's own terminal, and `exec -t`. The pty that counts is in the guest; window sizes
//! follow the host's.

use std::io::Write;

use hull_tests::console::ConsoleSocket;
use hull_tests::{hull_bin, in_a_terminal, text, Env};

#[test]
fn console_socket_gets_a_terminal_that_carries_input_output_and_window_size() {
    let env = Env::new("tty-socket");
    let b = env.bundle("b", &["sh", "-c", "tty; read a; stty size; read b; echo got:$b; exit 3"]);
    b.edit(|c| c["process"]["terminal"] = serde_json::json!(true));
    let console = ConsoleSocket::listen(&env.dir.join("console.sock"));
    let out =
        env.hull_detached(&["create", "--bundle", b.path(), "--console-socket", console.path.to_str().unwrap(), "t"]);
    assert!(out.status.success(), "create: {}", text(&out.stderr));
    let mut term = console.master();
    assert!(env.hull_out(&["start", "t"]).status.success());
    assert!(term.read_until("\n").contains("/dev/pts/"), "the process has a guest terminal");

    term.resize(123, 45);
    std::thread::sleep(std::time::Duration::from_millis(500));
    term.master.write_all(b"\n").unwrap();
    term.read_until("45 123");
    term.master.write_all(b"typed\n").unwrap();
    term.read_until("got:typed");

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while env.hull_out(&["state", "t"]).stdout.windows(7).all(|w| w != b"stopped") {
        assert!(std::time::Instant::now() < deadline, "container did not stop");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(env.hull_out(&["delete", "t"]).status.success());
    env.assert_clean();
}

#[test]
fn a_terminal_without_a_console_socket_is_refused_for_detached_containers() {
    let env = Env::new("tty-refused");
    let b = env.bundle("b", &["true"]);
    b.edit(|c| c["process"]["terminal"] = serde_json::json!(true));
    let out = env.hull_detached(&["create", "--bundle", b.path(), "t"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--console-socket"), "{}", text(&out.stderr));
    let b2 = env.bundle("b2", &["true"]);
    let out = env.hull_detached(&["create", "--bundle", b2.path(), "--console-socket", "/nonexistent.sock", "t2"]);
    assert!(text(&out.stderr).contains("process.terminal is false"), "{}", text(&out.stderr));
    env.assert_clean();
}

#[test]
fn run_and_exec_use_the_callers_terminal() {
    let env = Env::new("tty-own");
    let b = env.bundle("b", &["sh", "-c", "tty; stty size; exit 4"]);
    b.edit(|c| c["process"]["terminal"] = serde_json::json!(true));
    let hull = format!(
        "HULL_ASSET_DIR={} {} --root {}",
        std::env::var("HULL_ASSET_DIR").unwrap_or_default(),
        hull_bin().display(),
        env.root.display()
    );
    let out = in_a_terminal(91, 21, &format!("{hull} run --bundle {} fg", b.path()));
    let shown = text(&out.stdout);
    assert!(shown.contains("/dev/pts/") && shown.contains("21 91"), "{shown:?}");
    assert_eq!(out.status.code(), Some(4));

    let b = env.bundle("b2", &["sleep", "300"]);
    assert!(env.hull_detached(&["run", "-d", "--bundle", b.path(), "bg"]).status.success());
    let out = in_a_terminal(66, 17, &format!("{hull} exec -t bg sh -c 'tty; stty size; exit 5'"));
    let shown = text(&out.stdout);
    assert!(shown.contains("/dev/pts/") && shown.contains("17 66"), "{shown:?}");
    assert_eq!(out.status.code(), Some(5));
    assert!(env.hull_out(&["delete", "--force", "bg"]).status.success());
    env.assert_clean();
}

#[test]
fn exec_gives_the_terminal_the_process_console_size_before_it_runs() {
    let env = Env::new("tty-size");
    let b = env.bundle("b", &["sleep", "300"]);
    assert!(env.hull_detached(&["run", "-d", "--bundle", b.path(), "bg"]).status.success());
    // Nobody resizes this terminal: only consoleSize can give it a size, and the process reads
    // it at once.
    let process = serde_json::json!({
        "terminal": true,
        "consoleSize": { "height": 13, "width": 44 },
        "cwd": "/",
        "args": ["sh", "-c", "stty size; exit 7"],
        "env": ["PATH=/usr/bin:/bin"],
        "user": { "uid": 0, "gid": 0 },
    });
    let file = env.dir.join("process.json");
    std::fs::write(&file, process.to_string()).unwrap();
    let console = ConsoleSocket::listen(&env.dir.join("console.sock"));
    let out = env.hull_detached(&[
        "exec",
        "-d",
        "--tty",
        "--process",
        file.to_str().unwrap(),
        "--console-socket",
        console.path.to_str().unwrap(),
        "bg",
    ]);
    assert!(out.status.success(), "exec: {}", text(&out.stderr));
    let mut term = console.master();
    let shown = term.read_until("\n");
    assert!(shown.contains("13 44"), "the process saw {shown:?}");
    assert!(env.hull_out(&["delete", "--force", "bg"]).status.success());
    env.assert_clean();
}
