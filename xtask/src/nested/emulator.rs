//! Running one emulator: console lines with host timestamps, a time limit, and a kill of the
//! emulator's whole process group however the run ends (the emulator also dies with us).

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

mod sys {
    use std::ffi::c_int;
    extern "C" {
        pub fn prctl(option: c_int, ...) -> c_int;
        pub fn kill(pid: c_int, sig: c_int) -> c_int;
    }
    pub const PR_SET_PDEATHSIG: c_int = 1;
    pub const SIGKILL: c_int = 9;
}

/// Where the emulator writes the guest console.
pub enum Console {
    /// The emulator's stdout (QEMU `-serial stdio`); stderr is merged in.
    Stdout,
    /// A file the emulator appends to (Bochs `com1: mode=file`); stdout/stderr go to `aside`.
    File { path: PathBuf, aside: PathBuf },
}

/// Why a run ended.
#[derive(Debug, PartialEq)]
pub enum End {
    /// The console showed the stop line.
    Stopped,
    /// The emulator exited by itself with this status.
    Exited(String),
    /// The time limit passed.
    Timeout,
}

/// A console line and the host seconds since the emulator started.
pub struct Line {
    /// Host seconds since spawn.
    pub t: f64,
    /// The line, without its end-of-line characters.
    pub text: String,
}

/// Spawn `cmd` in a new process group that is killed if this process dies, collect console
/// lines until `stop` matches a line (then allow `grace` for a clean exit), the emulator exits,
/// or `timeout` passes; always kill the group at the end. `each` sees every line as it comes.
pub fn run(
    mut cmd: Command,
    console: Console,
    stop: &dyn Fn(&str) -> bool,
    timeout: Duration,
    grace: Duration,
    each: &mut dyn FnMut(&Line),
) -> Result<(Vec<Line>, End), String> {
    cmd.stdin(Stdio::null()).process_group(0);
    // SAFETY: prctl is async-signal-safe; it only sets this child's parent-death signal.
    unsafe {
        cmd.pre_exec(|| {
            if sys::prctl(sys::PR_SET_PDEATHSIG, sys::SIGKILL as std::ffi::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel::<Option<String>>();
    let done = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut child = match &console {
        Console::Stdout => {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            let mut child = cmd.spawn().map_err(|e| format!("spawn {:?}: {e}", cmd.get_program()))?;
            let out = child.stdout.take().ok_or("no stdout pipe")?;
            let err = child.stderr.take().ok_or("no stderr pipe")?;
            pipe_lines(out, tx.clone());
            pipe_lines(err, tx);
            child
        }
        Console::File { path, aside } => {
            let _ = fs::remove_file(path);
            let f = File::create(aside).map_err(|e| format!("{}: {e}", aside.display()))?;
            let f2 = f.try_clone().map_err(|e| e.to_string())?;
            cmd.stdout(f).stderr(f2);
            let child = cmd.spawn().map_err(|e| format!("spawn {:?}: {e}", cmd.get_program()))?;
            tail_file(path.clone(), tx, done.clone());
            child
        }
    };
    let result = collect(&mut child, &rx, start, stop, timeout, grace, each);
    kill_group(&mut child);
    done.store(true, Ordering::Relaxed);
    result
}

fn collect(
    child: &mut Child,
    rx: &Receiver<Option<String>>,
    start: Instant,
    stop: &dyn Fn(&str) -> bool,
    timeout: Duration,
    grace: Duration,
    each: &mut dyn FnMut(&Line),
) -> Result<(Vec<Line>, End), String> {
    let mut lines = Vec::new();
    let mut deadline = start + timeout;
    let mut end = End::Timeout;
    let mut stopped = false;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        match rx.recv_timeout((deadline - now).min(Duration::from_millis(200))) {
            Ok(Some(text)) => {
                let line = Line { t: start.elapsed().as_secs_f64(), text };
                each(&line);
                if !stopped && stop(&line.text) {
                    stopped = true;
                    end = End::Stopped;
                    deadline = Instant::now() + grace;
                }
                lines.push(line);
            }
            Ok(None) | Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                    // drain what the readers still hold
                    thread::sleep(Duration::from_millis(300));
                    while let Ok(Some(text)) = rx.try_recv() {
                        let line = Line { t: start.elapsed().as_secs_f64(), text };
                        each(&line);
                        stopped |= stop(&line.text);
                        lines.push(line);
                    }
                    if !stopped {
                        end = End::Exited(status.to_string());
                    } else {
                        end = End::Stopped;
                    }
                    break;
                }
                // both pipes closed but the emulator still alive: do not spin
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
    Ok((lines, end))
}

/// Kill the emulator's process group and reap the emulator.
fn kill_group(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) with a negative pid signals the process group the child leads;
        // the child is not reaped yet, so its pid (= pgid) cannot have been reused.
        unsafe {
            sys::kill(-pid, sys::SIGKILL);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn pipe_lines(r: impl Read + Send + 'static, tx: Sender<Option<String>>) {
    thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if tx.send(Some(clean(&buf))).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(None);
    });
}

/// Follow a file that another process appends to, line by line.
fn tail_file(path: PathBuf, tx: Sender<Option<String>>, done: Arc<AtomicBool>) {
    thread::spawn(move || {
        let mut pos = 0u64;
        let mut partial = Vec::new();
        while !done.load(Ordering::Relaxed) {
            if let Ok(mut f) = File::open(&path) {
                if f.seek(SeekFrom::Start(pos)).is_ok() {
                    let mut data = Vec::new();
                    if let Ok(n) = f.read_to_end(&mut data) {
                        pos += n as u64;
                        partial.extend_from_slice(&data);
                        while let Some(i) = partial.iter().position(|&b| b == b'\n') {
                            let rest = partial.split_off(i + 1);
                            if tx.send(Some(clean(&partial))).is_err() {
                                return;
                            }
                            partial = rest;
                        }
                    }
                }
            }
            thread::sleep(Duration::from_millis(100));
        }
    });
}

fn clean(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw)
        .trim_end_matches(['\n', '\r'])
        .replace('\r', "")
        .chars()
        .filter(|c| !c.is_control() || *c == '\t')
        .collect()
}
