//! `riegel demo` as a newcomer meets it: it starts, prints what to do,
//! and every command it prints works as printed.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

#[test]
fn the_demo_serves_the_login_and_its_printed_commands_work_as_printed() {
    let dir = tempdir("demo").join("d");
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_riegel"))
        .args(["demo", "--listen", &format!("127.0.0.1:{port}"), "--dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("demo");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    // Read on a thread to the end: a closed pipe would end the demo.
    let out = BufReader::new(child.stdout.take().expect("stdout"));
    let _guard = Kill(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut printed = Vec::new();
    let start = Instant::now();
    loop {
        let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("the demo printed no instructions: {printed:?}"));
        let done = line.contains("Ctrl-C stops");
        printed.push(line);
        if done {
            break;
        }
    }
    let field = |label: &str| -> String {
        printed
            .iter()
            .find_map(|l| l.trim().strip_prefix(label).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no {label} line in {printed:#?}"))
    };
    let url = field("Open:");
    assert_eq!(url, format!("http://127.0.0.1:{port}/"));
    let password = field("Password:");
    let admin = field("Admin:");

    // The login page a newcomer opens.
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(start.elapsed() < Duration::from_secs(60), "the demo did not start listening");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut c = Client::new(addr);
    let first = c.get("/");
    assert_eq!((first.status, first.location()), (303, "/_riegel/login"));
    let login = c.get("/_riegel/login");
    assert_eq!(login.status, 200);
    assert!(login.body.contains("Jetzt anmelden!"), "{}", login.body);
    // The demo user's printed password works.
    let r = c.login("demo", &password);
    assert_eq!((r.status, r.location()), (303, "/_riegel/setup"), "{}", r.body);

    // The admin command, exactly as printed, through a shell: `riegel` is
    // not on the PATH after `cargo run`, so it must name the binary.
    let ran = Command::new("sh").arg("-c").arg(&admin).output().expect("sh");
    assert!(ran.status.success(), "`{admin}` failed: {}", String::from_utf8_lossy(&ran.stderr));
    assert!(String::from_utf8_lossy(&ran.stdout).contains("demo\tdemo@example.invalid"), "{}", String::from_utf8_lossy(&ran.stdout));
}
