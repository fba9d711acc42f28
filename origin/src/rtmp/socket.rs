//! A connection's socket, in its two modes.
//!
//! While a connection handshakes and exchanges commands, its socket is *registered* with the
//! runtime: bytes wake the connection as they arrive. While it publishes, the socket is
//! *paced*: taken out of the runtime's epoll set and read on the ticks of one [`Ticker`] that
//! every paced connection shares, so one wakeup of the runtime reads all publishers. (One
//! timer for all rather than one each: tokio wakes its own driver, an eventfd write and an
//! extra epoll round, for every timer re-armed earlier than its next deadline.)
//!
//! Why: an encoder writes each audio and video message as it is produced, ~75 a second per
//! stream (30 fps video, AAC audio), and every arrival cost a wakeup — epoll, a context
//! switch, a task poll, a `recv` and the TCP window update it sends — which was most of the
//! origin's CPU per stream, and more than nginx-rtmp's whole per-stream budget
//! (bench/RESULTS.md, issue 2). The price is latency: a keyframe waits for the next tick
//! before it is read, so the segment it closes is listed half an interval later on average.
//!
//! Writes while paced (acknowledgements, command responses) go straight to the socket, which
//! then has a nearly empty send buffer; should one not fit, the socket is registered again for
//! the rest of it.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

/// The next instant after now on a grid of `interval`. Every grid has the same origin, so
/// grids whose intervals are multiples of each other tick together.
pub fn next_tick(interval: Duration) -> Instant {
    // Any fixed instant works as the grid's origin, as long as every connection uses the same.
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    let interval_ns = interval.as_nanos().max(1);
    let ticks = (Instant::now() - origin).as_nanos() / interval_ns + 1;
    let offset_ns = u64::try_from(ticks * interval_ns).unwrap_or(u64::MAX);
    origin + Duration::from_nanos(offset_ns)
}

/// Ticks every `interval` on the [`next_tick`] grid while anyone listens; see the module docs.
#[derive(Debug)]
pub struct Ticker {
    interval: Duration,
    ticks: watch::Sender<Instant>,
    /// Whether the task sending the ticks runs; it stops when the last receiver is gone.
    running: AtomicBool,
}

impl Ticker {
    /// A ticker, idle until [`Ticker::subscribe`].
    pub fn new(interval: Duration) -> Arc<Self> {
        Arc::new(Ticker {
            interval,
            ticks: watch::Sender::new(Instant::now()),
            running: AtomicBool::new(false),
        })
    }

    /// The ticks from now on: `changed()` resolves at each one, and the value is its instant.
    /// Starts the ticking task if it is not running; must be called inside the runtime.
    pub fn subscribe(self: &Arc<Self>) -> watch::Receiver<Instant> {
        let ticks = self.ticks.subscribe();
        if !self.running.swap(true, Ordering::AcqRel) {
            tokio::spawn(self.clone().run());
        }
        ticks
    }

    async fn run(self: Arc<Self>) {
        // Two timers leapfrogging, each re-armed one interval after the other: tokio unparks
        // its driver (an eventfd write, an extra epoll round) when a timer is re-armed earlier
        // than the driver's next deadline, which one timer re-armed every tick always is.
        let first = next_tick(self.interval);
        let current = tokio::time::sleep_until(first);
        let next = tokio::time::sleep_until(first + self.interval);
        tokio::pin!(current, next);
        // Armed now, not at its first poll, so the driver knows it before `current` fires.
        next.as_mut().reset(first + self.interval);
        loop {
            (&mut current).await;
            if self.ticks.receiver_count() == 0 {
                self.running.store(false, Ordering::Release);
                // A subscriber that came after the count and before the store saw us running
                // and started no task: carry on for it, unless a newer task already has.
                if self.ticks.receiver_count() == 0 || self.running.swap(true, Ordering::AcqRel) {
                    return;
                }
            }
            self.ticks.send_replace(current.deadline());
            let after_next = next.deadline() + self.interval;
            // A tick missed by more than an interval (a stalled runtime) goes back to the grid.
            let after_next = after_next.max(next_tick(self.interval));
            current.as_mut().reset(after_next);
            std::mem::swap(&mut current, &mut next);
        }
    }
}

/// A connection's socket; see the module docs.
#[derive(Debug)]
pub struct Socket {
    state: State,
}

#[derive(Debug)]
enum State {
    Registered(TcpStream),
    Paced(std::net::TcpStream),
    /// A mode switch failed half way; the connection is closed with that error.
    Lost,
}

fn lost() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "socket lost switching modes")
}

impl Socket {
    /// A socket registered with the runtime.
    pub fn new(stream: TcpStream) -> Self {
        Socket {
            state: State::Registered(stream),
        }
    }

    /// Takes the socket out of the runtime's epoll set; read it with [`Socket::try_read`].
    pub fn pace(&mut self) -> io::Result<()> {
        if let State::Registered(_) = self.state {
            let State::Registered(stream) = std::mem::replace(&mut self.state, State::Lost) else {
                return Err(lost());
            };
            // Non-blocking, as tokio leaves it.
            self.state = State::Paced(stream.into_std()?);
        }
        Ok(())
    }

    /// Registers the socket with the runtime again.
    pub fn register(&mut self) -> io::Result<()> {
        if let State::Paced(_) = self.state {
            let State::Paced(stream) = std::mem::replace(&mut self.state, State::Lost) else {
                return Err(lost());
            };
            self.state = State::Registered(TcpStream::from_std(stream)?);
        }
        Ok(())
    }

    fn registered(&mut self) -> io::Result<&mut TcpStream> {
        self.register()?;
        match &mut self.state {
            State::Registered(stream) => Ok(stream),
            _ => Err(lost()),
        }
    }

    /// Waits for bytes (registering the socket if it is paced); 0 means the peer closed.
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.registered()?.read(buf).await
    }

    /// Reads what has arrived without waiting: `WouldBlock` when nothing has. Either mode.
    pub fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.state {
            State::Registered(stream) => stream.try_read(buf),
            State::Paced(stream) => stream.read(buf),
            State::Lost => Err(lost()),
        }
    }

    /// Writes all of `bytes`.
    pub async fn write_all(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        if let State::Paced(stream) = &mut self.state {
            while !bytes.is_empty() {
                match stream.write(bytes) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => bytes = &bytes[n..],
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if bytes.is_empty() {
                return Ok(());
            }
            // The send buffer is full: wait for room like any registered socket, then pace
            // again.
            self.registered()?.write_all(bytes).await?;
            return self.pace();
        }
        self.registered()?.write_all(bytes).await
    }

    /// Shuts down the write half.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.registered()?.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ticks_of_all_connections_fall_on_one_grid() {
        let interval = Duration::from_millis(20);
        // The grid's origin is fixed by the first call.
        next_tick(interval);
        let start = Instant::now();
        let a = next_tick(interval);
        tokio::time::sleep(Duration::from_millis(7)).await;
        let b = next_tick(interval);
        assert!(a > start && a <= start + interval);
        let apart = if b > a { b - a } else { a - b };
        assert_eq!(apart.as_nanos() % interval.as_nanos(), 0);
    }

    #[tokio::test]
    async fn ticker_ticks_for_its_subscribers_and_stops_without_them() {
        let interval = Duration::from_millis(5);
        let ticker = Ticker::new(interval);
        let mut a = ticker.subscribe();
        let mut b = ticker.subscribe();
        a.changed().await.unwrap();
        b.changed().await.unwrap();
        assert_eq!(*a.borrow_and_update(), *b.borrow_and_update());
        let first = *a.borrow();
        a.changed().await.unwrap();
        assert_eq!(*a.borrow() - first, interval);
        drop((a, b));
        tokio::time::sleep(interval * 3).await;
        assert!(!ticker.running.load(Ordering::Acquire));
        // And starts again for a new subscriber.
        let mut c = ticker.subscribe();
        c.changed().await.unwrap();
    }

    #[tokio::test]
    async fn paced_socket_reads_what_arrived_and_writes_back() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut peer = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let mut socket = Socket::new(accepted);
        socket.pace().unwrap();

        let mut buf = [0u8; 64];
        let nothing = socket.try_read(&mut buf).unwrap_err();
        assert_eq!(nothing.kind(), io::ErrorKind::WouldBlock);
        peer.write_all(b"media").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(socket.try_read(&mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"media");

        socket.write_all(b"ack").await.unwrap();
        let mut got = [0u8; 3];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ack");

        // Registered again, it waits for bytes as before.
        peer.write_all(b"command").await.unwrap();
        assert_eq!(socket.read(&mut buf).await.unwrap(), 7);
        drop(peer);
        assert_eq!(socket.read(&mut buf).await.unwrap(), 0);
    }
}
