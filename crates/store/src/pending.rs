//! [`Pending`]: the answer to a [`Store`](crate::Store) call, on its way. Async callers (the
//! coordinator's handlers) await it, so they wait for the group commit without holding a thread;
//! synchronous callers (tests, benchmarks, tools) [`wait`](Pending::wait) for it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use crate::StoreError;

/// The result of a store operation, once the store has committed it.
pub struct Pending<T> {
    state: State<T>,
}

enum State<T> {
    Ready(Option<Result<T, StoreError>>),
    Waiting(oneshot::Receiver<Result<T, StoreError>>),
}

/// Where the store sends the result of the operation a [`Pending`] waits for.
pub struct Answer<T>(oneshot::Sender<Result<T, StoreError>>);

impl<T> Answer<T> {
    /// Sends the result; a caller that stopped waiting is no error.
    pub fn send(self, result: Result<T, StoreError>) {
        let _ = self.0.send(result);
    }
}

impl<T> Pending<T> {
    /// A pending result and the place to answer it.
    pub fn channel() -> (Answer<T>, Self) {
        let (sender, receiver) = oneshot::channel();
        (
            Answer(sender),
            Self {
                state: State::Waiting(receiver),
            },
        )
    }

    /// A result known at once (a request refused before it reached the store).
    pub fn ready(result: Result<T, StoreError>) -> Self {
        Self {
            state: State::Ready(Some(result)),
        }
    }

    /// Blocks the calling thread until the result is in. Not for async code: await it there.
    pub fn wait(self) -> Result<T, StoreError> {
        match self.state {
            State::Ready(result) => result.unwrap_or(Err(StoreError::Closed)),
            State::Waiting(receiver) => receiver.blocking_recv().unwrap_or(Err(StoreError::Closed)),
        }
    }
}

// Nothing inside is pinned in place: the receiver is `Unpin` and the ready value is only moved out.
impl<T> Unpin for Pending<T> {}

impl<T> Future for Pending<T> {
    type Output = Result<T, StoreError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().state {
            State::Ready(result) => Poll::Ready(result.take().unwrap_or(Err(StoreError::Closed))),
            // A store that dropped the answer unsent has stopped.
            State::Waiting(receiver) => Pin::new(receiver)
                .poll(cx)
                .map(|received| received.unwrap_or(Err(StoreError::Closed))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_sent_from_another_thread_is_waited_for_and_a_dropped_answer_is_an_error() {
        let (answer, pending) = Pending::channel();
        std::thread::spawn(move || answer.send(Ok(7)));
        assert_eq!(pending.wait().expect("answered"), 7);
        let (answer, pending) = Pending::<u8>::channel();
        drop(answer);
        assert!(matches!(pending.wait(), Err(StoreError::Closed)));
        assert!(matches!(Pending::ready(Ok(1u8)).wait(), Ok(1)));
    }

    #[test]
    fn it_is_a_future() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let (answer, pending) = Pending::channel();
        std::thread::spawn(move || answer.send(Ok("committed")));
        assert_eq!(runtime.block_on(pending).expect("answered"), "committed");
    }
}
