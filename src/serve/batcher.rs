//! The queue between request handlers and the model thread: handlers submit decoded images,
//! the model thread takes them in batches, so that concurrent requests share one forward pass.
//! A batch closes when it has `max_batch` images, when no more are on their way (nothing
//! waiting and no request being decoded: waiting would only add latency), or `max_wait` after
//! its first image.
//!
//! The queue is bounded in images: a request that does not fit is refused at once (the caller
//! answers 503) instead of waiting, so that a burst cannot grow memory or latency without end.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// How often a batch that waits for images on their way checks that some still are.
const POLL: Duration = Duration::from_millis(1);

/// One queued item and where its answer goes.
struct Job<T, R> {
    item: T,
    reply: oneshot::Sender<R>,
}

/// Why a submission was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The queue holds `capacity` images already (or the request alone is larger).
    #[error("the queue is full ({capacity} images)")]
    Full { capacity: usize },
    /// The model thread has stopped.
    #[error("the model has stopped")]
    Closed,
}

/// The handlers' side of the queue (cheap to clone).
pub struct Submitter<T, R> {
    sender: mpsc::Sender<Job<T, R>>,
    depth: Arc<AtomicUsize>,
    capacity: usize,
}

impl<T, R> Clone for Submitter<T, R> {
    fn clone(&self) -> Self {
        Self {
            sender: self.sender.clone(),
            depth: self.depth.clone(),
            capacity: self.capacity,
        }
    }
}

/// The model thread's side of the queue.
pub struct Taker<T, R> {
    receiver: mpsc::Receiver<Job<T, R>>,
    depth: Arc<AtomicUsize>,
}

/// A queue holding at most `capacity` items.
pub fn queue<T, R>(capacity: usize) -> (Submitter<T, R>, Taker<T, R>) {
    let (sender, receiver) = mpsc::channel();
    let depth = Arc::new(AtomicUsize::new(0));
    (
        Submitter {
            sender,
            depth: depth.clone(),
            capacity: capacity.max(1),
        },
        Taker { receiver, depth },
    )
}

impl<T, R> Submitter<T, R> {
    /// Queue all of `items` or none of them; one receiver per item, in order.
    pub fn submit(&self, items: Vec<T>) -> Result<Vec<oneshot::Receiver<R>>, Refused> {
        let n = items.len();
        // Reserve the room first, so that a request's images are queued together or not at all.
        let before = self.depth.fetch_add(n, Ordering::SeqCst);
        if before + n > self.capacity {
            self.depth.fetch_sub(n, Ordering::SeqCst);
            return Err(Refused::Full {
                capacity: self.capacity,
            });
        }
        let mut receivers = Vec::with_capacity(n);
        for (i, item) in items.into_iter().enumerate() {
            let (reply, receiver) = oneshot::channel();
            if self.sender.send(Job { item, reply }).is_err() {
                // Nothing will take the rest: give their room back.
                self.depth.fetch_sub(n - i, Ordering::SeqCst);
                return Err(Refused::Closed);
            }
            receivers.push(receiver);
        }
        Ok(receivers)
    }

    /// Images waiting for the model now.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::SeqCst)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

impl<T, R> Taker<T, R> {
    /// Run `process` on batches until every [`Submitter`] is dropped and the queue is empty:
    /// a batch is the first waiting item and those that arrive after it, up to `max_batch`,
    /// while `on_their_way()` says more items are coming (requests being decoded), for at most
    /// `max_wait`. `process` returns one result per item, in order. An answer whose requester
    /// has gone (the client hung up) is dropped.
    pub fn run(
        self,
        max_batch: usize,
        max_wait: Duration,
        on_their_way: impl Fn() -> bool,
        mut process: impl FnMut(Vec<T>) -> Vec<R>,
    ) {
        let max_batch = max_batch.max(1);
        while let Ok(first) = self.receiver.recv() {
            let mut jobs = vec![first];
            let deadline = Instant::now() + max_wait;
            while jobs.len() < max_batch {
                // Whatever is already waiting joins without delay.
                match self.receiver.try_recv() {
                    Ok(job) => {
                        jobs.push(job);
                        continue;
                    }
                    Err(mpsc::TryRecvError::Disconnected) => break,
                    Err(mpsc::TryRecvError::Empty) => {}
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() || !on_their_way() {
                    break;
                }
                // Polled: an image whose decoding fails is never submitted.
                match self.receiver.recv_timeout(left.min(POLL)) {
                    Ok(job) => jobs.push(job),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
            self.depth.fetch_sub(jobs.len(), Ordering::SeqCst);
            let (items, replies): (Vec<T>, Vec<_>) =
                jobs.into_iter().map(|j| (j.item, j.reply)).unzip();
            for (reply, result) in replies.into_iter().zip(process(items)) {
                let _ = reply.send(result);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Block on a oneshot from a plain thread.
    fn wait<R>(receiver: oneshot::Receiver<R>) -> R {
        receiver.blocking_recv().unwrap()
    }

    #[test]
    fn concurrent_items_share_batches_and_answers_keep_their_order() {
        let (submitter, taker) = queue::<u32, u32>(64);
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let model = std::thread::spawn(move || {
            taker.run(
                8,
                Duration::from_millis(50),
                || true,
                |items| {
                    seen.lock().unwrap().push(items.len());
                    items.iter().map(|x| x * 10).collect()
                },
            )
        });
        let clients: Vec<_> = (0..16u32)
            .map(|c| {
                let s = submitter.clone();
                std::thread::spawn(move || {
                    let receivers = s.submit(vec![c, c + 100]).unwrap();
                    receivers.into_iter().map(wait).collect::<Vec<_>>()
                })
            })
            .collect();
        for (c, client) in clients.into_iter().enumerate() {
            let c = c as u32;
            assert_eq!(client.join().unwrap(), vec![c * 10, (c + 100) * 10]);
        }
        drop(submitter);
        model.join().unwrap();
        let sizes = sizes.lock().unwrap();
        assert_eq!(sizes.iter().sum::<usize>(), 32);
        assert!(sizes.iter().all(|&n| n <= 8), "{sizes:?}");
        assert!(sizes.len() < 32, "no batching happened: {sizes:?}");
    }

    #[test]
    fn a_batch_closes_at_once_when_nothing_more_is_on_its_way() {
        let (submitter, taker) = queue::<u32, u32>(8);
        let coming = Arc::new(AtomicUsize::new(0));
        let on_their_way = {
            let coming = coming.clone();
            move || coming.load(Ordering::SeqCst) > 0
        };
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = sizes.clone();
        // A minute's max_wait: only "nothing on its way" can close these batches in time.
        let model = std::thread::spawn(move || {
            taker.run(8, Duration::from_secs(60), on_their_way, |items| {
                seen.lock().unwrap().push(items.len());
                items
            })
        });
        let started = Instant::now();
        assert_eq!(wait(submitter.submit(vec![1]).unwrap().remove(0)), 1);
        // One image on its way: the batch waits for it, then closes with both.
        coming.store(1, Ordering::SeqCst);
        let first = submitter.submit(vec![2]).unwrap().remove(0);
        std::thread::sleep(Duration::from_millis(50));
        let second = submitter.submit(vec![3]).unwrap().remove(0);
        coming.store(0, Ordering::SeqCst);
        assert_eq!((wait(first), wait(second)), (2, 3));
        assert!(started.elapsed() < Duration::from_secs(30));
        drop(submitter);
        model.join().unwrap();
        assert_eq!(*sizes.lock().unwrap(), [1, 2]);
    }

    #[test]
    fn a_full_queue_refuses_whole_requests_and_frees_room_as_batches_run() {
        let (submitter, taker) = queue::<u32, u32>(3);
        let held = submitter.submit(vec![1, 2]).unwrap();
        assert_eq!(submitter.depth(), 2);
        assert_eq!(
            submitter.submit(vec![3, 4]).unwrap_err(),
            Refused::Full { capacity: 3 }
        );
        assert_eq!(submitter.depth(), 2, "a refused request takes no room");
        let model =
            std::thread::spawn(move || taker.run(4, Duration::ZERO, || true, |items| items));
        assert_eq!(held.into_iter().map(wait).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(submitter.depth(), 0);
        let again = submitter.submit(vec![3, 4, 5]).unwrap();
        assert_eq!(
            again.into_iter().map(wait).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        drop(submitter);
        model.join().unwrap();
    }

    #[test]
    fn queued_items_are_answered_after_the_last_submitter_goes() {
        let (submitter, taker) = queue::<u32, u32>(8);
        let receivers = submitter.submit(vec![7, 8, 9]).unwrap();
        drop(submitter);
        taker.run(2, Duration::from_millis(1), || true, |items| items);
        assert_eq!(
            receivers.into_iter().map(wait).collect::<Vec<_>>(),
            vec![7, 8, 9]
        );
    }

    #[test]
    fn a_stopped_model_refuses_and_returns_the_room() {
        let (submitter, taker) = queue::<u32, u32>(8);
        drop(taker);
        assert_eq!(submitter.submit(vec![1, 2]).unwrap_err(), Refused::Closed);
        assert_eq!(submitter.depth(), 0);
    }
}
