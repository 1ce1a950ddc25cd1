//! `riegel demo` as a newcomer meets it: it starts, prints what to do,
//! and every command it prints works as printed.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

/// A running `riegel demo` and what it printed up to "Ctrl-C stops".
struct Demo {
    child: std::process::Child,
    printed: Vec<String>,
    addr: std::net::SocketAddr,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Demo {
    fn start(extra: &[&str]) -> Demo {
        let dir = tempdir("demo").join("d");
        let port = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_riegel"))
            .arg("demo")
            .args(extra)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--dir"])
            .arg(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("demo");
        // Read on a thread to the end: a closed pipe would end the demo.
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let mut demo = Demo { child, printed: Vec::new(), addr };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        loop {
            let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("the demo printed no instructions: {:?}", demo.printed));
            let done = line.contains("Ctrl-C stops");
            demo.printed.push(line);
            if done {
                break;
            }
        }
        let start = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(start.elapsed() < Duration::from_secs(60), "the demo did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
        demo
    }

    fn field(&self, label: &str) -> String {
        self.printed
            .iter()
            .find_map(|l| l.trim().strip_prefix(label).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no {label} line in {:#?}", self.printed))
    }
}

/// Runs `command` through a shell, exactly as printed; its stdout.
fn run_as_printed(command: &str) -> String {
    let ran = Command::new("sh").arg("-c").arg(command).output().expect("sh");
    assert!(ran.status.success(), "`{command}` failed: {}", String::from_utf8_lossy(&ran.stderr));
    String::from_utf8_lossy(&ran.stdout).into_owned()
}

#[test]
fn the_demo_serves_the_login_and_its_printed_commands_work_as_printed() {
    let demo = Demo::start(&[]);
    let url = demo.field("Open:");
    assert_eq!(url, format!("http://{}/", demo.addr));
    let password = demo.field("Password:");
    let admin = demo.field("Admin:");
    let addr = demo.addr;

    // The login page a newcomer opens.
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
    let listed = run_as_printed(&admin);
    assert!(listed.contains("demo\tdemo@example.invalid"), "{listed}");
}

#[test]
fn the_portal_login_demo_logs_in_at_the_portal_and_its_printed_commands_work() {
    let demo = Demo::start(&["--portal-login"]);
    let user = demo.field("Username:").split_whitespace().next().expect("name").to_string();
    let password = demo.field("Password:");
    let admin = demo.field("Admin:");
    let mut c = Client::new(demo.addr);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("time").as_secs() as i64;
    let e = login_and_enrol_at(&mut c, &user, &password, now);
    assert!(e.activated.body.contains("Erfolgreich aktiviert"), "{}", e.activated.body);
    let page = c.get("/");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("portal-session"), "the page names the portal session: {}", page.body);
    // The admin command as printed, then the one the hint names.
    assert!(run_as_printed(&admin).contains(&user), "{admin}");
    let disable = admin.replace("user list", &format!("user disable {user}"));
    let said = run_as_printed(&disable);
    assert!(said.contains("ended 1 sessions (and 1 portal sessions)"), "{said}");
    assert_eq!(c.get("/").status, 303, "logged out of riegel");
}
