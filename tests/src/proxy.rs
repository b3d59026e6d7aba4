//! A small TCP proxy between the bus and the broker, to cut connections on demand: all of them
//! for good ([`Proxy::cut`]), or the current ones only ([`Proxy::drop_connections`]).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Forwards `127.0.0.1:<port>` to a target until [`Proxy::cut`].
pub struct Proxy {
    addr: SocketAddr,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    listener: JoinHandle<()>,
}

impl Proxy {
    /// Listen on a free local port and forward every connection to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let conns = tasks.clone();
        let listener = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns.lock().unwrap().push(task);
            }
        });
        Ok(Proxy {
            addr,
            tasks,
            listener,
        })
    }

    /// The local address to connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drop every forwarded connection, but keep listening: clients see their connections
    /// reset and can connect again at once. Returns how many connections were dropped.
    pub fn drop_connections(&self) -> usize {
        let mut tasks = self.tasks.lock().unwrap();
        let mut dropped = 0;
        for t in tasks.drain(..) {
            if !t.is_finished() {
                dropped += 1;
            }
            t.abort();
        }
        dropped
    }

    /// Stop listening and drop every forwarded connection: the broker becomes unreachable.
    pub fn cut(&self) {
        self.listener.abort();
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}
