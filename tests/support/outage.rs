//! A TCP forwarder on loopback that a test can cut: while it is down, every connection
//! through it is closed and new ones are refused, as when the apiserver is unreachable.
//! Traffic only ever goes from 127.0.0.1 to the target on 127.0.0.1.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Outage {
    addr: std::net::SocketAddr,
    down: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Outage {
    /// Forwards 127.0.0.1:<some port> to `target` (an address on loopback).
    pub async fn start(target: std::net::SocketAddr) -> Outage {
        assert!(target.ip().is_loopback(), "only loopback targets");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let down = Arc::new(AtomicBool::new(false));
        let (cut, _) = watch::channel(0u64);
        let (down2, cut2) = (down.clone(), cut.clone());
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if down2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut cut_rx = cut2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let mut inbound = inbound;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        Outage {
            addr,
            down,
            cut,
            task,
        }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Cuts every connection and refuses new ones until [`Outage::end`].
    pub fn begin(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    pub fn end(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        self.task.abort();
    }
}
