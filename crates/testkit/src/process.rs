//! Finding binaries, picking ports, and running a server under a watchdog
//! that stops it when the test process goes away.

use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use crate::INSTALL_HINT;
use crate::wait::poll_blocking;

/// Finds `name`: the environment variable `env_override` first (a path), then
/// `PATH`, then the workspace's `.airlock/bin` (where install-deps.sh links
/// what it installs), then each of `extra_dirs`. Panics with an install hint
/// when absent.
pub fn find_binary(name: &str, env_override: &str, extra_dirs: &[PathBuf]) -> PathBuf {
    if let Some(p) = std::env::var_os(env_override) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "{env_override}={} does not name a file; unset it or point it at the {name} binary",
            p.display()
        );
        return p;
    }
    let mut path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.airlock/bin"));
    for dir in path_dirs.iter().chain(extra_dirs) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "`{name}` was not found on PATH{}; {INSTALL_HINT}, or set {env_override} to its path",
        if extra_dirs.is_empty() {
            String::new()
        } else {
            format!(
                " nor in {}",
                extra_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    )
}

/// A port that was free a moment ago on 127.0.0.1. Callers retry on a clash.
pub fn free_port() -> u16 {
    // A port is free when the kernel hands it out, but the server it is
    // for binds it later: meanwhile another test (a thread of this process,
    // or another test process under nextest) may be handed the same port,
    // and one of two servers then answers for both. A lock file per port,
    // held until this process ends, makes each port given out once across
    // every test process on the machine.
    static HELD: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());
    let dir = std::env::temp_dir().join("airlock-test-ports");
    let _ = std::fs::create_dir_all(&dir);
    for _ in 0..1000 {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind 127.0.0.1:0 to find a free port")
            .local_addr()
            .expect("local_addr of a bound listener")
            .port();
        let Ok(file) = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(port.to_string()))
        else {
            // No place for lock files: the old behaviour.
            return port;
        };
        if file.try_lock().is_ok() {
            HELD.lock().unwrap_or_else(|e| e.into_inner()).push(file);
            return port;
        }
    }
    panic!("no free port: every port the kernel offered is already given to a test");
}

/// The watchdog. `$1` is a directory to remove when the owner goes away
/// (empty: none); the rest is the server command. It prints the server's pid,
/// then waits. A background reader holds the owner's pipe (moved to fd 3,
/// since a background job's stdin is /dev/null): EOF means
/// the owner is gone, so it marks that in the directory, then stops the
/// server; after the server exits the directory is removed only in that
/// case (a deliberate `stop` keeps it, so the server can be restarted on
/// the same data). The mark is made before the kill, so the check after the
/// server's exit cannot race the reader's own exit.
const WATCHDOG: &str = r#"
dir="$1"; shift
exec 3<&0
"$@" >&2 3<&- &
child=$!
echo "$child"
( cat <&3 >/dev/null; [ -n "$dir" ] && : > "$dir/.owner-gone"; kill -TERM "$child" 2>/dev/null ) &
exec 3<&-
wait "$child"
status=$?
if [ -n "$dir" ] && [ -e "$dir/.owner-gone" ]; then
  rm -rf "$dir"
fi
exit "$status"
"#;

/// A server process under the watchdog.
#[derive(Debug)]
pub(crate) struct Supervised {
    shell: Child,
    /// Held open for the server's lifetime: closing it stops the server.
    lifeline: Option<ChildStdin>,
    pid: u32,
    pub(crate) log: PathBuf,
}

impl Supervised {
    /// Starts `command` with its output appended to `log`. `cleanup` is the
    /// directory the watchdog removes if this process dies without `stop`.
    pub(crate) fn spawn(command: &mut Command, log: &Path, cleanup: Option<&Path>) -> Supervised {
        let program = command.get_program().to_owned();
        let args: Vec<_> = command.get_args().map(|a| a.to_owned()).collect();
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("open server log {}: {e}", log.display()));
        let err = out.try_clone().expect("clone log file handle");
        let mut shell = Command::new("sh");
        shell
            .arg("-c")
            .arg(WATCHDOG)
            .arg("airlock-testkit-watchdog")
            .arg(cleanup.map(|p| p.as_os_str().to_owned()).unwrap_or_default())
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err);
        for (k, v) in command.get_envs() {
            match v {
                Some(v) => shell.env(k, v),
                None => shell.env_remove(k),
            };
        }
        if let Some(dir) = command.get_current_dir() {
            shell.current_dir(dir);
        }
        let mut shell = shell.spawn().expect("spawn sh for the server watchdog");
        let stdout = shell.stdout.take().expect("watchdog stdout is piped");
        let mut first = String::new();
        BufReader::new(stdout)
            .read_line(&mut first)
            .expect("read the server pid from the watchdog");
        let pid = first
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("watchdog printed {first:?} instead of a pid"));
        // The server writes to the log (the watchdog points its stdout at
        // stderr), never to this pipe, so dropping the reader is safe.
        drop(out);
        Supervised {
            lifeline: shell.stdin.take(),
            shell,
            pid,
            log: log.to_path_buf(),
        }
    }

    /// The server's pid (the program's own: the watchdog runs it as a job).
    #[cfg(test)]
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.shell.try_wait(), Ok(None))
    }

    /// Sends `signal` (a `kill` signal name) to the server and waits for it.
    pub(crate) fn stop(&mut self, signal: &str) {
        if self.is_running() {
            let _ = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(self.pid.to_string())
                .status();
            if poll_blocking(Duration::from_secs(20), || !self.is_running()).is_err() {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(self.pid.to_string())
                    .status();
                let _ = self.shell.wait();
            }
        }
        // The server is gone; let the watchdog's reader finish too.
        self.lifeline.take();
    }

    /// The last lines of the server's log, for failure messages.
    pub(crate) fn log_tail(&self) -> String {
        log_tail(&self.log)
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop("TERM");
    }
}

pub(crate) fn log_tail(log: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(log) {
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(30);
    lines[start..].join("\n")
}

/// Waits until `127.0.0.1:port` accepts a TCP connection.
pub(crate) fn wait_for_port(port: u16, timeout: Duration) -> bool {
    poll_blocking(timeout, || {
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
    })
    .is_ok()
}

/// True when running as root, where PostgreSQL refuses to start.
pub(crate) fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What happens when a test process dies: its end of the lifeline closes,
    /// and the watchdog stops the server and removes its directory.
    #[test]
    fn owner_gone_stops_server_and_removes_dir() {
        let dir = tempfile::tempdir().expect("tempdir").keep();
        let log = dir.join("server.log");
        let mut sup = Supervised::spawn(Command::new("sleep").arg("300"), &log, Some(&dir));
        let pid = sup.pid;
        assert!(
            Path::new(&format!("/proc/{pid}")).exists(),
            "server should be running"
        );
        // Simulate the owner's death: close the pipe without a deliberate stop.
        sup.lifeline.take();
        let status = sup.shell.wait().expect("watchdog exits");
        assert!(
            !status.success(),
            "sleep was killed, so the watchdog reports failure"
        );
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "server {pid} still running"
        );
        assert!(!dir.exists(), "watchdog should remove {}", dir.display());
    }

    /// A deliberate stop keeps the directory (for restart).
    #[test]
    fn deliberate_stop_keeps_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("server.log");
        let mut sup = Supervised::spawn(Command::new("sleep").arg("300"), &log, Some(dir.path()));
        sup.stop("TERM");
        assert!(!sup.is_running());
        assert!(dir.path().exists());
    }

    #[test]
    #[should_panic(expected = "install-deps.sh")]
    fn missing_binary_says_how_to_install() {
        find_binary("airlock-no-such-binary", "AIRLOCK_NO_SUCH_BINARY", &[]);
    }
}
