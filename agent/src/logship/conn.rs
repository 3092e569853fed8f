//! A connection to one syslog receiver: TCP (RFC 6587 framing), TLS over TCP (RFC
//! 5425) or UDP (RFC 5426), and what the forwarder asks of it: is the peer still there,
//! and has it acknowledged every byte.

use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs, UdpSocket};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use berth_schema::logs::{Target, Transport};
use rustix::event::{PollFd, PollFlags};

/// How long a connection attempt may take, per address.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A receiver that takes no bytes for this long is treated as gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

pub enum Conn {
    Tcp(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
    Udp(UdpSocket),
}

fn tcp(target: &Target) -> Result<TcpStream, String> {
    let addrs = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|e| format!("{target}: {e}"))?;
    let mut last = format!("{target}: no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
            Ok(s) => {
                // Reads happen only in the TLS handshake and when the socket is
                // readable; the timeout keeps a peer that never answers a handshake from
                // holding the forward.
                s.set_write_timeout(Some(WRITE_TIMEOUT))
                    .and_then(|()| s.set_read_timeout(Some(WRITE_TIMEOUT)))
                    .map_err(|e| e.to_string())?;
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = format!("{target} ({a}): {e}"),
        }
    }
    Err(last)
}

/// The TLS client settings: trust `ca` (PEM) when given, else the machine's CAs.
pub fn tls_config(ca: Option<&str>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let pem = match ca {
        Some(ca) => ca.as_bytes().to_vec(),
        None => std::fs::read(crate::http::CA_BUNDLE).unwrap_or_default(),
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("the CA: {e}"))?;
        roots.add(cert).map_err(|e| format!("the CA: {e}"))?;
    }
    if roots.is_empty() {
        return Err("no CA certificate to trust".into());
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

impl Conn {
    pub fn open(target: &Target, tls: Option<&Arc<rustls::ClientConfig>>) -> Result<Conn, String> {
        match target.transport {
            Transport::Tcp => Ok(Conn::Tcp(tcp(target)?)),
            Transport::Tls => {
                let config = tls.ok_or("no TLS settings")?.clone();
                let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                    .map_err(|e| format!("{target}: {e}"))?;
                let conn = rustls::ClientConnection::new(config, name)
                    .map_err(|e| format!("{target}: {e}"))?;
                let mut stream = rustls::StreamOwned::new(conn, tcp(target)?);
                // The handshake now, so a bad certificate is said at connection time.
                while stream.conn.is_handshaking() {
                    stream
                        .conn
                        .complete_io(&mut stream.sock)
                        .map_err(|e| format!("{target}: TLS: {e}"))?;
                }
                Ok(Conn::Tls(Box::new(stream)))
            }
            Transport::Udp => {
                let addr = (target.host.as_str(), target.port)
                    .to_socket_addrs()
                    .map_err(|e| format!("{target}: {e}"))?
                    .next()
                    .ok_or_else(|| format!("{target}: no address"))?;
                let bind = if addr.is_ipv4() {
                    "0.0.0.0:0"
                } else {
                    "[::]:0"
                };
                let s = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
                s.connect(addr).map_err(|e| format!("{target}: {e}"))?;
                Ok(Conn::Udp(s))
            }
        }
    }

    /// Whether what was sent can be known to have arrived (not over UDP).
    pub fn acknowledged(&self) -> bool {
        !matches!(self, Conn::Udp(_))
    }

    /// Sends messages: framed ones over a stream, each one a datagram over UDP.
    pub fn send(&mut self, messages: &[Vec<u8>]) -> std::io::Result<()> {
        match self {
            Conn::Udp(s) => {
                for m in messages {
                    // A datagram refused (ECONNREFUSED from an earlier ICMP) is not
                    // worth stopping for: UDP promises nothing.
                    let _ = s.send(&super::syslog::datagram(m.clone()));
                }
                Ok(())
            }
            Conn::Tcp(_) | Conn::Tls(_) => {
                let mut framed = Vec::with_capacity(messages.iter().map(|m| m.len() + 8).sum());
                for m in messages {
                    super::syslog::frame(m, &mut framed);
                }
                let w: &mut dyn Write = match self {
                    Conn::Tcp(s) => s,
                    Conn::Tls(s) => s.as_mut(),
                    Conn::Udp(_) => return Ok(()),
                };
                w.write_all(&framed)?;
                w.flush()
            }
        }
    }

    fn socket(&self) -> Option<&TcpStream> {
        match self {
            Conn::Tcp(s) => Some(s),
            Conn::Tls(s) => Some(&s.sock),
            Conn::Udp(_) => None,
        }
    }

    /// Why the connection is over, if it is: the receiver closed or reset it.
    /// Receivers send nothing on a syslog stream but TLS's own records (a TLS 1.3
    /// server's session tickets), which are taken in here; an end of stream, an error
    /// or a close alert means gone.
    pub fn ended(&mut self) -> Option<String> {
        let s = self.socket()?;
        let mut fds = [PollFd::new(
            s,
            PollFlags::IN | PollFlags::RDHUP | PollFlags::ERR | PollFlags::HUP,
        )];
        match rustix::event::poll(&mut fds, Some(&rustix::event::Timespec::default())) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) => return Some(format!("poll: {e}")),
        }
        let revents = fds[0].revents();
        if revents.intersects(PollFlags::ERR | PollFlags::HUP) {
            let error = s.take_error().ok().flatten();
            return Some(match error {
                Some(e) => format!("the connection failed: {e}"),
                None => "the connection hung up".into(),
            });
        }
        match self {
            Conn::Tcp(s) => {
                // Readable: an end of stream, or bytes a receiver should not send
                // (read and dropped).
                let mut buf = [0u8; 4096];
                match std::io::Read::read(s, &mut buf) {
                    Ok(0) => Some("the receiver closed the connection".into()),
                    Ok(_) => None,
                    Err(e) => Some(format!("the connection failed: {e}")),
                }
            }
            Conn::Tls(t) => match t.conn.read_tls(&mut t.sock) {
                Ok(0) => Some("the receiver closed the connection".into()),
                Err(e) => Some(format!("the connection failed: {e}")),
                Ok(_) => match t.conn.process_new_packets() {
                    Err(e) => Some(format!("TLS: {e}")),
                    Ok(state) if state.peer_has_closed() => {
                        Some("the receiver closed the TLS session".into())
                    }
                    Ok(_) => None,
                },
            },
            Conn::Udp(_) => None,
        }
    }

    /// Bytes sent that the receiver's TCP has not acknowledged yet.
    pub fn unacknowledged(&self) -> u64 {
        self.socket().map_or(0, |s| {
            super::sys::unsent_bytes(s.as_fd()).unwrap_or(u64::MAX)
        })
    }
}
