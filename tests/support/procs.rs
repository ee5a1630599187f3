//! Child processes of the stack: started from one keeper thread that lives as long as
//! the process (PR_SET_PDEATHSIG fires when the *thread* that forked dies), killed by
//! the kernel if the test process dies, and terminated by an atexit hook on a normal exit.
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

type Job = (Command, PathBuf, mpsc::Sender<std::io::Result<u32>>);

static KEEPER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
static PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Starts `cmd` as a service of the stack, its stdout and stderr appended to `log`.
/// Returns its pid. The process is stopped when this process exits, however it exits.
pub fn spawn_service(cmd: Command, log: PathBuf) -> std::io::Result<u32> {
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("stack-keeper".into())
            .spawn(move || {
                // Never returns: the sender lives in a static, so recv only ends with the process.
                while let Ok((mut cmd, log, reply)) = rx.recv() {
                    let _ = reply.send(start(&mut cmd, &log));
                }
            })
            .expect("spawn stack keeper thread");
        // SAFETY: registering a plain extern "C" fn with atexit.
        unsafe { libc::atexit(stop_all) };
        Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    keeper
        .lock()
        .expect("keeper lock")
        .send((cmd, log, tx))
        .map_err(|_| std::io::Error::other("stack keeper thread is gone"))?;
    rx.recv()
        .map_err(|_| std::io::Error::other("stack keeper thread is gone"))?
}

/// Removes `dir` when the process exits (after its services are stopped).
pub fn remove_at_exit(dir: PathBuf) {
    DIRS.lock().expect("dirs lock").push(dir);
}

fn start(cmd: &mut Command, log: &PathBuf) -> std::io::Result<u32> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    let pid = child.id();
    PIDS.lock().expect("pids lock").push(pid);
    // The Child handle is dropped on purpose: the pid is reaped by stop_all at exit.
    std::mem::forget(child);
    Ok(pid)
}

extern "C" fn stop_all() {
    let pids = PIDS.lock().map(|p| p.clone()).unwrap_or_default();
    for &pid in &pids {
        // SAFETY: signalling our own children.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    for &pid in &pids {
        loop {
            let mut status = 0;
            // SAFETY: reaping our own child.
            let r = unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) };
            if r != 0 {
                break;
            }
            if std::time::Instant::now() >= deadline {
                // SAFETY: as above.
                unsafe {
                    libc::kill(pid as i32, libc::SIGKILL);
                    libc::waitpid(pid as i32, &mut status, 0);
                }
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    for dir in DIRS.lock().map(|d| d.clone()).unwrap_or_default() {
        let _ = std::fs::remove_dir_all(dir);
    }
}
