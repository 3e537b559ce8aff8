//! The HTTP side of a worker: threads that post SOAP messages and report outcomes.
//!
//! Pure Rust, no pgrx: only the worker's main thread may call PostgreSQL, so the threads here
//! exchange plain values with it. Jobs go in through a channel; outcomes come back through
//! another, and each outcome also writes one byte to a socket that the main thread waits on
//! together with its latch, so it wakes as soon as a delivery ends.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, RwLock};
use std::thread;
#[cfg(test)]
use std::time::{Duration, Instant};

use std::collections::HashMap;

use crate::deliver::http::{Client, Failure, Limits};
use crate::deliver::tls::{Identity, Roots};
use crate::queue::Row;

/// One SOAP message to post.
pub struct Job {
    /// Numbers the worker's jobs, to match each outcome to its request.
    pub id: u64,
    pub message_id: i64,
    /// The queue rows of its notifications.
    pub rows: Vec<Row>,
    /// Most attempts among its notifications, this one included (for the backoff).
    pub attempts: u32,
    pub url: String,
    pub body: String,
    /// The client certificate to present, under a key that changes when it does.
    pub identity: Option<(String, Arc<Identity>)>,
}

/// The outcome of a job.
pub struct Done {
    /// The job's id; `None` for a batch refused without being sent.
    pub job: Option<u64>,
    pub message_id: i64,
    pub rows: Vec<Row>,
    pub attempts: u32,
    pub outcome: Result<(), Failure>,
}

/// A pool of HTTP threads sharing one keep-alive client.
pub struct Pool {
    jobs: Sender<Job>,
    job_queue: Arc<Mutex<Receiver<Job>>>,
    done_tx: Sender<Done>,
    done: Receiver<Done>,
    clients: Arc<RwLock<Clients>>,
    wake_tx: UnixStream,
    wake_rx: UnixStream,
    threads: usize,
}

impl Pool {
    /// A pool with no threads yet; [`Pool::ensure_threads`] starts them.
    pub fn new(limits: Limits, roots: Roots) -> std::io::Result<Pool> {
        let (jobs, job_queue) = channel();
        let (done_tx, done) = channel();
        let (wake_tx, wake_rx) = UnixStream::pair()?;
        wake_tx.set_nonblocking(true)?;
        wake_rx.set_nonblocking(true)?;
        Ok(Pool {
            jobs,
            job_queue: Arc::new(Mutex::new(job_queue)),
            done_tx,
            done,
            clients: Arc::new(RwLock::new(Clients::new(limits, roots))),
            wake_tx,
            wake_rx,
            threads: 0,
        })
    }

    /// Starts threads until there are `count`. Threads are never stopped: the caller bounds
    /// how many jobs are in flight.
    pub fn ensure_threads(&mut self, count: usize) -> std::io::Result<()> {
        while self.threads < count {
            let queue = Arc::clone(&self.job_queue);
            let done = self.done_tx.clone();
            let clients = Arc::clone(&self.clients);
            let wake = self.wake_tx.try_clone()?;
            thread::Builder::new()
                .name(format!("outbound_msg http {}", self.threads))
                .spawn(move || serve(&queue, &done, &clients, &wake))?;
            self.threads += 1;
        }
        Ok(())
    }

    /// Uses `limits` for the next jobs (after a reload); jobs in flight keep their own.
    pub fn set_limits(&mut self, limits: Limits) {
        if let Ok(mut clients) = self.clients.write() {
            if clients.limits != limits {
                *clients = Clients::new(limits, clients.roots.clone());
            }
        }
    }

    /// Verifies servers against `roots` from the next job on.
    pub fn set_roots(&mut self, roots: Roots) {
        if let Ok(mut clients) = self.clients.write() {
            *clients = Clients::new(clients.limits.clone(), roots);
        }
    }

    pub fn submit(&self, job: Job) {
        // The receiving end lives in `self`: sending cannot fail while the pool exists.
        let _ = self.jobs.send(job);
    }

    /// Outcomes that arrived since the last call; never blocks.
    pub fn finished(&self) -> Vec<Done> {
        let mut buf = [0u8; 256];
        while matches!((&self.wake_rx).read(&mut buf), Ok(n) if n > 0) {}
        self.done.try_iter().collect()
    }

    /// The socket that becomes readable when an outcome arrives.
    pub fn wake_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.wake_rx.as_raw_fd()
    }
}

/// HTTP clients sharing limits and roots: one without a client certificate, and one per
/// identity presented.
struct Clients {
    limits: Limits,
    roots: Roots,
    by_identity: HashMap<String, Arc<Client>>,
}

impl Clients {
    fn new(limits: Limits, roots: Roots) -> Clients {
        Clients {
            limits,
            roots,
            by_identity: HashMap::new(),
        }
    }

    /// The client for `identity`, built on first use.
    fn get(
        lock: &RwLock<Clients>,
        identity: Option<&(String, Arc<Identity>)>,
    ) -> Option<Arc<Client>> {
        let key = identity.map_or("", |(key, _)| key.as_str());
        if let Some(client) = lock.read().ok()?.by_identity.get(key) {
            return Some(Arc::clone(client));
        }
        let mut clients = lock.write().ok()?;
        let client = Arc::new(Client::new(
            clients.limits.clone(),
            &clients.roots,
            identity.map(|(_, i)| i.as_ref()),
        ));
        clients
            .by_identity
            .insert(key.to_string(), Arc::clone(&client));
        Some(client)
    }
}

fn serve(
    queue: &Mutex<Receiver<Job>>,
    done: &Sender<Done>,
    clients: &RwLock<Clients>,
    mut wake: &UnixStream,
) {
    loop {
        let job = match queue.lock() {
            Ok(queue) => match queue.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
            Err(_) => return,
        };
        let Some(client) = Clients::get(clients, job.identity.as_ref()) else {
            return;
        };
        let outcome = client.deliver(&job.url, &job.body);
        let finished = Done {
            job: Some(job.id),
            message_id: job.message_id,
            rows: job.rows,
            attempts: job.attempts,
            outcome,
        };
        if done.send(finished).is_err() {
            return;
        }
        // A full socket buffer already means "wake up": losing this byte is fine.
        let _ = wake.write(&[1]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn outcomes_come_back_and_wake_the_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        drop(listener);
        let limits = Limits {
            timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            max_response_bytes: 1024,
        };
        let mut pool = Pool::new(limits, Err("no roots".into())).unwrap();
        pool.ensure_threads(2).unwrap();
        for _ in 0..3 {
            pool.submit(Job {
                id: 1,
                message_id: 7,
                rows: Vec::new(),
                attempts: 1,
                url: url.clone(),
                body: "<x/>".into(),
                identity: None,
            });
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut done = Vec::new();
        let mut woke = false;
        while done.len() < 3 && Instant::now() < deadline {
            let mut byte = [0u8; 1];
            woke |= matches!((&pool.wake_rx).read(&mut byte), Ok(1));
            done.extend(pool.finished());
            thread::sleep(Duration::from_millis(5));
        }
        assert!(woke, "an outcome makes the wake socket readable");
        assert_eq!(done.len(), 3);
        assert!(done.iter().all(|d| d.message_id == 7 && d.outcome.is_err()));
    }
}
