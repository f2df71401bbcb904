//! The threads every backend runs: one writer, which owns its connection and the live work and
//! commits groups (`group.rs`), and readers, each with a connection of its own, which run reads
//! in read-only snapshots off the writer. A backend is its connections; this is how they are run.

use std::sync::{Arc, Mutex, mpsc};

use crate::group::{self, Database, Job};
use crate::live::Live;
use crate::sql::Sql;
use crate::{Pending, StoreError};

/// A read for a reader connection; it answers its caller itself.
type ReadJob = Box<dyn FnOnce(&mut dyn Sql) + Send>;

/// A connection that serves reads, each inside [`begin_read`](Reader::begin_read) and
/// [`end_read`](Reader::end_read).
pub(crate) trait Reader: Sql + Send + 'static {
    /// Opens a read-only snapshot (reconnecting first if the connection broke).
    fn begin_read(&mut self) -> Result<(), StoreError>;
    /// Closes it.
    fn end_read(&mut self);
}

/// The running writer and readers; dropping it lets each finish what it holds, then joins them.
pub(crate) struct Threads {
    jobs: Option<mpsc::Sender<Job>>,
    /// `None` without readers: reads then go through the writer.
    reads: Option<mpsc::Sender<ReadJob>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Threads {
    /// Starts the writer on `writer` and a reader on each of `readers`; threads are named after
    /// `name`.
    pub(crate) fn start<D, R>(
        name: &str,
        mut writer: D,
        readers: Vec<R>,
    ) -> Result<Self, StoreError>
    where
        D: Database + Send + 'static,
        R: Reader,
    {
        let spawn_failed =
            |e: std::io::Error| StoreError::Corrupt(format!("cannot start a store thread: {e}"));
        let (jobs, queue) = mpsc::channel();
        let mut threads = vec![
            std::thread::Builder::new()
                .name(format!("{name}-writer"))
                .spawn(move || group::write_loop(&mut writer, &queue))
                .map_err(spawn_failed)?,
        ];
        let reads = if readers.is_empty() {
            None
        } else {
            let (reads, queue) = mpsc::channel::<ReadJob>();
            let queue = Arc::new(Mutex::new(queue));
            for (n, reader) in readers.into_iter().enumerate() {
                let queue = queue.clone();
                threads.push(
                    std::thread::Builder::new()
                        .name(format!("{name}-reader-{n}"))
                        .spawn(move || read_loop(reader, &queue))
                        .map_err(spawn_failed)?,
                );
            }
            Some(reads)
        };
        Ok(Self {
            jobs: Some(jobs),
            reads,
            threads,
        })
    }

    /// No threads: what a store holds while it is being taken apart.
    pub(crate) fn none() -> Self {
        Self {
            jobs: None,
            reads: None,
            threads: Vec::new(),
        }
    }

    /// Runs `work` in the writer's group; see [`Backend::write`](crate::operations::Backend).
    pub(crate) fn write<T, F>(&self, work: F) -> Pending<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Sql, &mut Live) -> Result<T, StoreError> + Send + 'static,
    {
        let (job, pending) = group::job(work);
        // A job that cannot be queued is dropped with its answer: the caller sees `Closed`.
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(job);
        }
        pending
    }

    /// Runs read-only `work` on a reader, or on the writer if there is none.
    pub(crate) fn read<T, F>(&self, work: F) -> Pending<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Sql) -> Result<T, StoreError> + Send + 'static,
    {
        let Some(reads) = &self.reads else {
            return self.write(move |tx, _| work(tx));
        };
        let (answer, pending) = Pending::channel();
        let read: ReadJob = Box::new(move |tx: &mut dyn Sql| answer.send(work(tx)));
        let _ = reads.send(read);
        pending
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        // Closing the queues ends the threads once they have finished what they hold.
        drop(self.jobs.take());
        drop(self.reads.take());
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A reader: takes the next read from the shared queue and runs it in its own snapshot.
fn read_loop<R: Reader>(mut db: R, queue: &Mutex<mpsc::Receiver<ReadJob>>) {
    loop {
        let next = match queue.lock() {
            Ok(receiver) => receiver.recv(),
            Err(_) => return,
        };
        let Ok(read) = next else {
            return;
        };
        if db.begin_read().is_err() {
            // Dropping the read unanswered tells its caller the store failed.
            db.end_read();
            continue;
        }
        read(&mut db);
        db.end_read();
    }
}
