//! iridium_server in this process, on its own runtime and thread, for the SSISDB tests and the
//! shipping benchmark.

use std::path::Path;
use std::time::Duration;

use iridium_core::PersistentDatabase;
use iridium_server::{Credentials, ServerConfig, TdsServer};

pub const USER: &str = "scaleout_master";

/// iridium_server on its own runtime and thread: dropping that runtime ends the accept loop
/// and every session (TdsServer has no shutdown), which releases the data dir.
pub struct Iridium {
    pub port: u16,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Iridium {
    pub fn start(port: u16, data_dir: &Path, password: &str) -> Result<Iridium, String> {
        let mut cfg = ServerConfig::default()
            .host("127.0.0.1")
            .port(port)
            .database("SSISDB")
            .data_dir(data_dir.to_path_buf())
            .disable_tls();
        cfg.auth = Some(Credentials {
            user: USER.into(),
            password: password.into(),
        });
        let (addr_tx, addr_rx) = std::sync::mpsc::channel::<Result<u16, String>>();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let dir = data_dir.to_path_buf();
        let thread = std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = addr_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let res = rt.block_on(async move {
                let db = PersistentDatabase::new_persistent(&dir).map_err(|e| e.to_string())?;
                let mut server = TdsServer::new_with_database(db, cfg);
                let addr = server.bind().await.map_err(|e| e.to_string())?;
                tokio::spawn(async move {
                    if let Err(e) = server.run().await {
                        eprintln!("iridium run: {e}");
                    }
                });
                Ok::<u16, String>(addr.port())
            });
            let ok = res.is_ok();
            let _ = addr_tx.send(res);
            if ok {
                let _ = stop_rx.recv();
            }
            rt.shutdown_timeout(Duration::from_secs(5));
        });
        let port = addr_rx.recv().map_err(|e| e.to_string())??;
        Ok(Iridium {
            port,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Iridium {
    fn drop(&mut self) {
        self.stop_inner();
    }
}
