//! TCP over a serial line: how a lab guest reaches a server on the host's loopback with no
//! guest networking at all.
//!
//! The guest has no network device. In it, [`serve_guest`] (`graft lab bridge`) listens on the
//! guest's own `127.0.0.1:PORT` and carries every connection made to it, multiplexed, over a
//! serial port. QEMU connects that port to a socket on the host's `127.0.0.1`
//! ([`HostBridge`]), and the host end opens a connection to the target (the fleet's server,
//! also on `127.0.0.1`) for each one. Bytes are carried as they are, so TLS runs end to end
//! between the guest's client and the server: the bridge sees only ciphertext.
//!
//! The line carries frames: a kind (1 byte), a connection id (4 bytes, big-endian), a payload
//! length (2 bytes, big-endian) and the payload. The guest opens with [`HELLO`], and the host
//! skips whatever the port carried before it (the kernel's probing of the UART).

use std::collections::HashMap;
use std::io::{self, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// What the guest sends first, so the host knows where the frames begin.
pub const HELLO: &[u8] = b"\0graft-bridge-1\n";
/// The largest payload of one frame.
const CHUNK: usize = 4096;

/// What a frame says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Guest to host: a new connection with this id.
    Open = 1,
    /// Bytes of a connection.
    Data = 2,
    /// Either way: the connection is closed.
    Close = 3,
    /// Host to guest: stop bridging (the run is over).
    Shutdown = 4,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => Kind::Open,
            2 => Kind::Data,
            3 => Kind::Close,
            4 => Kind::Shutdown,
            _ => return None,
        })
    }
}

/// One end of the line: the frames it writes, and the connections it carries.
struct Mux {
    line: Mutex<Box<dyn Write + Send>>,
    conns: Mutex<HashMap<u32, TcpStream>>,
}

impl Mux {
    fn new(line: Box<dyn Write + Send>) -> Arc<Self> {
        Arc::new(Self {
            line: Mutex::new(line),
            conns: Mutex::new(HashMap::new()),
        })
    }

    /// Writes one frame whole: frames of different connections never interleave.
    fn send(&self, kind: Kind, id: u32, payload: &[u8]) -> io::Result<()> {
        let len = u16::try_from(payload.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame payload too long"))?;
        let mut frame = Vec::with_capacity(7 + payload.len());
        frame.push(kind as u8);
        frame.extend_from_slice(&id.to_be_bytes());
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(payload);
        let mut line = self.line.lock().unwrap_or_else(PoisonError::into_inner);
        line.write_all(&frame)?;
        line.flush()
    }

    fn conns(&self) -> std::sync::MutexGuard<'_, HashMap<u32, TcpStream>> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Carries `stream`'s bytes onto the line until it closes, then tells the other end, unless
    /// the other end closed it first.
    fn pump(self: Arc<Self>, id: u32, mut stream: TcpStream) {
        std::thread::spawn(move || {
            let mut buf = vec![0u8; CHUNK];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if self.send(Kind::Data, id, &buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            if self.conns().remove(&id).is_some() {
                let _ = self.send(Kind::Close, id, &[]);
            }
        });
    }

    /// Takes a connection into the bridge.
    fn carry(self: &Arc<Self>, id: u32, stream: TcpStream) -> io::Result<()> {
        let reader = stream.try_clone()?;
        self.conns().insert(id, stream);
        Arc::clone(self).pump(id, reader);
        Ok(())
    }

    /// Reads frames from the line until it ends or the host says to stop; `open` answers a
    /// new connection from the other end (the host's side dials; the guest's refuses).
    fn dispatch(
        self: &Arc<Self>,
        line: &mut dyn Read,
        open: &dyn Fn(u32) -> io::Result<TcpStream>,
    ) -> io::Result<Ended> {
        let mut header = [0u8; 7];
        let mut payload = vec![0u8; u16::MAX as usize];
        loop {
            if let Err(e) = line.read_exact(&mut header) {
                return match e.kind() {
                    io::ErrorKind::UnexpectedEof => Ok(Ended::LineClosed),
                    _ => Err(e),
                };
            }
            let kind = Kind::from_byte(header[0]).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bridge frame of unknown kind {}", header[0]),
                )
            })?;
            let id = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
            let len = usize::from(u16::from_be_bytes([header[5], header[6]]));
            line.read_exact(&mut payload[..len])?;
            match kind {
                Kind::Open => match open(id) {
                    Ok(stream) => self.carry(id, stream)?,
                    Err(e) => {
                        tracing::debug!(id, "bridge: cannot open the connection: {e}");
                        self.send(Kind::Close, id, &[])?;
                    }
                },
                Kind::Data => {
                    let mut conns = self.conns();
                    let failed = conns
                        .get_mut(&id)
                        .is_some_and(|s| s.write_all(&payload[..len]).is_err());
                    if failed {
                        if let Some(stream) = conns.remove(&id) {
                            let _ = stream.shutdown(Shutdown::Both);
                            drop(conns);
                            self.send(Kind::Close, id, &[])?;
                        }
                    }
                }
                Kind::Close => {
                    if let Some(stream) = self.conns().remove(&id) {
                        let _ = stream.shutdown(Shutdown::Both);
                    }
                }
                Kind::Shutdown => return Ok(Ended::Shutdown),
            }
        }
    }

    /// Closes every connection (the line is gone).
    fn close_all(&self) {
        for (_, stream) in self.conns().drain() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// Why a bridge stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The host said the run is over.
    Shutdown,
    /// The serial line closed.
    LineClosed,
}

/// The guest's end: listens on the guest's `127.0.0.1:port` and carries each connection over
/// `device` (a serial port, put into raw mode here) until the host says to stop.
pub fn serve_guest(port: u16, device: &std::path::Path) -> io::Result<Ended> {
    let line = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)?;
    raw_mode(&line)?;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))?;
    let mux = Mux::new(Box::new(line.try_clone()?));
    mux.send_hello()?;
    let accepting = Arc::clone(&mux);
    std::thread::spawn(move || {
        let next = AtomicU32::new(1);
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let _ = stream.set_nodelay(true);
            let id = next.fetch_add(1, Ordering::Relaxed);
            if accepting.send(Kind::Open, id, &[]).is_err() || accepting.carry(id, stream).is_err()
            {
                break;
            }
        }
    });
    let refuse = |_id| -> io::Result<TcpStream> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the guest end opens no connections for the host",
        ))
    };
    let ended = mux.dispatch(&mut BufReader::new(line), &refuse);
    mux.close_all();
    ended
}

impl Mux {
    fn send_hello(&self) -> io::Result<()> {
        let mut line = self.line.lock().unwrap_or_else(PoisonError::into_inner);
        line.write_all(HELLO)?;
        line.flush()
    }
}

/// A serial port carries bytes as they are: no echo, no line editing, no newline translation,
/// no flow-control characters, eight bits.
fn raw_mode(line: &std::fs::File) -> io::Result<()> {
    use rustix::termios::{tcgetattr, tcsetattr, OptionalActions};
    let mut termios = tcgetattr(line)?;
    termios.make_raw();
    tcsetattr(line, OptionalActions::Now, &termios)?;
    Ok(())
}

/// The host's end of one guest's bridge: a socket on `127.0.0.1` for QEMU's serial port to
/// connect to, and a connection to `target` for each connection the guest opens.
pub struct HostBridge {
    port: u16,
    current: Arc<Mutex<Option<Arc<Mux>>>>,
    stopping: Arc<AtomicBool>,
}

impl std::fmt::Debug for HostBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostBridge")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl HostBridge {
    /// Listens on a free port of `127.0.0.1`; each connection the guest opens is carried to
    /// `target`, which must be a loopback address.
    pub fn start(target: SocketAddr) -> io::Result<Self> {
        if !target.ip().is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the bridge carries guests only to loopback addresses, not {target}"),
            ));
        }
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        let current: Arc<Mutex<Option<Arc<Mux>>>> = Arc::new(Mutex::new(None));
        let stopping = Arc::new(AtomicBool::new(false));
        let (slot, stop) = (Arc::clone(&current), Arc::clone(&stopping));
        std::thread::spawn(move || {
            for line in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(line) = line else { continue };
                if let Err(e) = serve_host(line, target, &slot) {
                    tracing::debug!("bridge line ended: {e}");
                }
            }
        });
        Ok(Self {
            port,
            current,
            stopping,
        })
    }

    /// The port QEMU's serial port connects to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Tells the guest's end to stop bridging. False when no guest is connected.
    pub fn shutdown_guest(&self) -> bool {
        let mux = self
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        mux.is_some_and(|m| m.send(Kind::Shutdown, 0, &[]).is_ok())
    }
}

impl Drop for HostBridge {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        // Wake the accepting thread so it sees the flag.
        let _ = TcpStream::connect_timeout(
            &SocketAddr::from((Ipv4Addr::LOCALHOST, self.port)),
            Duration::from_millis(200),
        );
        if let Some(mux) = self
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            mux.close_all();
        }
    }
}

/// Serves one serial line (one QEMU run) until it closes.
fn serve_host(
    line: TcpStream,
    target: SocketAddr,
    slot: &Mutex<Option<Arc<Mux>>>,
) -> io::Result<()> {
    let mut reader = BufReader::new(line.try_clone()?);
    skip_to_hello(&mut reader)?;
    let mux = Mux::new(Box::new(line));
    *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&mux));
    let dial = |_id| {
        let stream = TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    };
    let ended = mux.dispatch(&mut reader, &dial);
    mux.close_all();
    ended.map(drop)
}

/// Reads until the guest's [`HELLO`].
fn skip_to_hello(reader: &mut dyn Read) -> io::Result<()> {
    let mut window = Vec::with_capacity(HELLO.len());
    let mut byte = [0u8; 1];
    loop {
        reader.read_exact(&mut byte)?;
        if window.len() == HELLO.len() {
            window.remove(0);
        }
        window.push(byte[0]);
        if window == HELLO {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        reason = "a panic in a test is a failed assertion"
    )]

    use super::*;
    use std::os::unix::net::UnixStream;

    /// Both ends of the protocol over a socket pair standing in for the serial line, with a
    /// real echo server on loopback as the target.
    #[test]
    fn connections_cross_the_line_both_ways_and_close() {
        let echo = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let target = echo.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in echo.incoming() {
                let mut s = s.unwrap();
                std::thread::spawn(move || {
                    let mut r = s.try_clone().unwrap();
                    let _ = io::copy(&mut r, &mut s);
                });
            }
        });
        let (guest_line, host_line) = UnixStream::pair().unwrap();
        // Host end: junk before the hello is skipped.
        let host = Mux::new(Box::new(host_line.try_clone().unwrap()));
        let host_for_thread = Arc::clone(&host);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(host_line);
            skip_to_hello(&mut reader).unwrap();
            let dial = |_id| TcpStream::connect(target);
            host_for_thread.dispatch(&mut reader, &dial).unwrap();
        });
        let mut g = guest_line.try_clone().unwrap();
        g.write_all(b"\x55\xaa junk").unwrap();
        let guest = Mux::new(Box::new(guest_line.try_clone().unwrap()));
        guest.send_hello().unwrap();
        let guest_for_thread = Arc::clone(&guest);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let refuse = |_id| Err(io::Error::other("no"));
            let ended = guest_for_thread.dispatch(&mut BufReader::new(guest_line), &refuse);
            done_tx.send(ended.unwrap()).unwrap();
        });
        // Two client connections through the guest end, in parallel, each echoed intact.
        let local = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = local.local_addr().unwrap();
        let clients: Vec<_> = (0..2u8)
            .map(|n| {
                std::thread::spawn(move || {
                    let mut c = TcpStream::connect(addr).unwrap();
                    let data: Vec<u8> = (0..20_000u32).map(|i| (i as u8) ^ n).collect();
                    c.write_all(&data).unwrap();
                    let mut back = vec![0u8; data.len()];
                    c.read_exact(&mut back).unwrap();
                    assert_eq!(back, data);
                })
            })
            .collect();
        for id in 1..=2 {
            let (stream, _) = local.accept().unwrap();
            guest.send(Kind::Open, id, &[]).unwrap();
            guest.carry(id, stream).unwrap();
        }
        for c in clients {
            c.join().unwrap();
        }
        // The clients closed: their ids leave both ends.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !(guest.conns().is_empty() && host.conns().is_empty()) {
            assert!(
                std::time::Instant::now() < deadline,
                "connections left open"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        host.send(Kind::Shutdown, 0, &[]).unwrap();
        assert_eq!(
            done_rx.recv_timeout(Duration::from_secs(5)).unwrap(),
            Ended::Shutdown
        );
    }

    /// A connection the host cannot open (the server is down) is closed in the guest at once,
    /// so the client sees a refusal, not a hang.
    #[test]
    fn a_connection_the_host_cannot_open_is_closed_in_the_guest() {
        let (guest_line, host_line) = UnixStream::pair().unwrap();
        let host = Mux::new(Box::new(host_line.try_clone().unwrap()));
        std::thread::spawn(move || {
            // The server refuses, as a closed port does. (Not a port just freed: another
            // listener of the test run may be given it, and then the dial succeeds.)
            let dial = |_id| -> io::Result<TcpStream> {
                Err(io::Error::from(io::ErrorKind::ConnectionRefused))
            };
            let _ = host.dispatch(&mut BufReader::new(host_line), &dial);
        });
        let guest = Mux::new(Box::new(guest_line.try_clone().unwrap()));
        let g = Arc::clone(&guest);
        std::thread::spawn(move || {
            let refuse = |_id| Err(io::Error::other("no"));
            let _ = g.dispatch(&mut BufReader::new(guest_line), &refuse);
        });
        let local = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let mut client = TcpStream::connect(local.local_addr().unwrap()).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let (stream, _) = local.accept().unwrap();
        guest.send(Kind::Open, 7, &[]).unwrap();
        guest.carry(7, stream).unwrap();
        let mut buf = [0u8; 1];
        let read = client.read(&mut buf);
        assert!(
            matches!(read, Ok(0)) || read.is_err_and(|e| e.kind() != io::ErrorKind::WouldBlock),
            "the client's connection stayed open"
        );
    }

    #[test]
    fn a_non_loopback_target_is_refused() {
        let err = HostBridge::start(SocketAddr::from(([192, 0, 2, 1], 80))).unwrap_err();
        assert!(err.to_string().contains("loopback"), "{err}");
    }
}
