//! Group commit, for every backend: one writer owns the connection and the live work, takes
//! every operation waiting, runs each in its own savepoint inside one transaction (a failing one
//! is rolled back alone), commits once, and only then answers each caller. One commit (one fsync,
//! one round trip) serves many acknowledgements, and nothing is acknowledged before it is
//! durable.

use std::sync::mpsc;

use crate::live::Live;
use crate::shards::Shards;
use crate::sql::Sql;
use crate::{Pending, StoreError, work};

/// Operations committed together at most: bounds the latency one group adds to its last member.
pub(crate) const MAX_GROUP: usize = 512;

/// A connection the writer drives: [`Sql`] plus the transaction around each group.
pub(crate) trait Database: Sql {
    /// Begins the group's transaction; says whether the live work held is still current (a
    /// writer that took the project over must load it again).
    fn begin(&mut self) -> Result<bool, StoreError>;
    /// Sends everything held and commits.
    fn commit(&mut self) -> Result<(), StoreError>;
    /// Abandons the transaction after a failure (whatever state it is in).
    fn rollback(&mut self);
    /// Loads the live work this writer decides (all of it, for a lone coordinator).
    fn load_live(&mut self) -> Result<Live, StoreError> {
        work::load_live(self.as_sql(), Shards::alone())
    }

    /// Sees the live work after each group (committed or not): a shared backend tells the
    /// other coordinators what its shards want from it.
    fn after_group(&mut self, _live: &Live) {}
    fn as_sql(&mut self) -> &mut dyn Sql;

    /// Starts one operation of the group, which can be undone alone.
    fn begin_job(&mut self) -> Result<(), StoreError> {
        self.as_sql().execute("SAVEPOINT job", &[])
    }

    /// Keeps the operation's writes.
    fn end_job(&mut self) -> Result<(), StoreError> {
        self.as_sql().execute("RELEASE job", &[])
    }

    /// Undoes the operation's writes (it failed), keeping the group's others.
    fn undo_job(&mut self) -> Result<(), StoreError> {
        let tx = self.as_sql();
        tx.execute("ROLLBACK TO job", &[])?;
        tx.execute("RELEASE job", &[])
    }
}

/// One operation for the writer: it runs inside the group's transaction (in its own savepoint)
/// with the live work, and says how it went and how to answer its caller once the group's fate
/// is known.
/// A job refused before it ran (the group could not begin) is called with the reason, answers
/// its caller with it and returns `None`.
pub(crate) type Job =
    Box<dyn FnOnce(Result<(&mut dyn Sql, &mut Live), &StoreError>) -> Option<JobDone> + Send>;
type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;

pub(crate) struct JobDone {
    /// Its writes are kept (else its savepoint is rolled back).
    ok: bool,
    /// It failed in a way that may have left `Live` ahead of the database.
    stale: bool,
    reply: Reply,
}

/// Wraps `work` as a job and the [`Pending`] its caller awaits: the result arrives once the
/// group is committed, or as the error that stopped it.
pub(crate) fn job<T, F>(work: F) -> (Job, Pending<T>)
where
    T: Send + 'static,
    F: FnOnce(&mut dyn Sql, &mut Live) -> Result<T, StoreError> + Send + 'static,
{
    let (answer, pending) = Pending::channel();
    let job: Job = Box::new(
        move |context: Result<(&mut dyn Sql, &mut Live), &StoreError>| {
            let (tx, live) = match context {
                Ok(context) => context,
                Err(refused) => {
                    answer.send(Err(refused.for_another()));
                    return None;
                }
            };
            let outcome = work(tx, live);
            let ok = outcome.is_ok();
            let stale = matches!(&outcome, Err(error) if !error.is_refusal());
            let reply: Reply = Box::new(move |committed: Result<(), String>| {
                answer.send(match committed {
                    Ok(()) => outcome,
                    Err(message) => Err(StoreError::Commit(message)),
                });
            });
            Some(JobDone { ok, stale, reply })
        },
    );
    (job, pending)
}

/// The writer: groups waiting jobs into one transaction each until the queue closes. `live` is
/// `None` when it must be (re)loaded from the database before the next group: at start, and
/// after a group in which an operation failed midway or the commit failed.
pub(crate) fn write_loop(db: &mut dyn Database, jobs: &mpsc::Receiver<Job>) {
    let mut live: Option<Live> = None;
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        commit_group(db, &mut live, group);
    }
}

/// Runs one group. Dropping a job unanswered tells its caller the store failed.
fn commit_group(db: &mut dyn Database, live: &mut Option<Live>, group: Vec<Job>) {
    match db.begin() {
        Ok(true) => {}
        Ok(false) => *live = None,
        Err(error) => {
            eprintln!("herd-store: cannot begin a transaction: {error}");
            db.rollback();
            for job in group {
                job(Err(&error));
            }
            return;
        }
    }
    let mut live_now = match live.take() {
        Some(loaded) => loaded,
        None => match db.load_live() {
            Ok(loaded) => loaded,
            Err(error) => {
                eprintln!("herd-store: cannot load the live work: {error}");
                db.rollback();
                for job in group {
                    job(Err(&error));
                }
                return;
            }
        },
    };
    let mut stale = false;
    let mut replies = Vec::with_capacity(group.len());
    for job in group {
        if db.begin_job().is_err() {
            stale = true;
            continue;
        }
        let Some(done) = job(Ok((db.as_sql(), &mut live_now))) else {
            continue;
        };
        stale |= done.stale;
        if done.ok {
            if let Err(error) = db.end_job() {
                stale = true;
                (done.reply)(Err(error.to_string()));
                continue;
            }
        } else if db.undo_job().is_err() {
            stale = true;
        }
        replies.push(done.reply);
    }
    let committed = db.commit().map_err(|e| e.to_string());
    if committed.is_err() {
        db.rollback();
    }
    db.after_group(&live_now);
    if committed.is_ok() && !stale {
        *live = Some(live_now);
    }
    for reply in replies {
        reply(committed.clone());
    }
}
