//! A TCP relay that can be cut, to partition one process from one server
//! without touching anyone else: while cut, bytes stop flowing both ways
//! (established connections stall, as across a real partition: nothing is
//! closed or reset) and new connections wait. Healing lets everything
//! through again.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A relay on 127.0.0.1 to one target, for as long as the test process.
#[derive(Debug, Clone)]
pub struct Relay {
    port: u16,
    cut: Arc<AtomicBool>,
}

fn wait_while(cut: &AtomicBool) {
    while cut.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Copies `from` to `to` until either ends, holding bytes while cut.
fn pipe(mut from: TcpStream, mut to: TcpStream, cut: Arc<AtomicBool>) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        wait_while(&cut);
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

impl Relay {
    /// Starts relaying a new port of 127.0.0.1 to `target`.
    pub fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a relay port");
        let port = listener.local_addr().expect("relay address").port();
        let cut = Arc::new(AtomicBool::new(false));
        let flag = cut.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let flag = flag.clone();
                std::thread::spawn(move || {
                    wait_while(&flag);
                    let Ok(upstream) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) else {
                        return;
                    };
                    let (Ok(client_r), Ok(upstream_r)) = (client.try_clone(), upstream.try_clone()) else {
                        return;
                    };
                    let back = flag.clone();
                    std::thread::spawn(move || pipe(upstream_r, client, back));
                    pipe(client_r, upstream, flag);
                });
            }
        });
        Relay { port, cut }
    }

    /// `nats://127.0.0.1:<port>`: the relay's address as a NATS URL.
    pub fn nats_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the flow: the partition begins.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Release);
    }

    /// Lets everything through again.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::Release);
    }
}
