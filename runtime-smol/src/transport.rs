//! Opening the byte stream to the broker: TCP or TLS (rustls through futures-rustls).

use std::io;
use std::sync::Arc;
use std::task::Poll;

use async_net::TcpStream;
use bytes::BytesMut;
use futures_lite::io::{AsyncRead, AsyncWriteExt};
use futures_rustls::TlsConnector;
use futures_rustls::client::TlsStream;
use mqtt_session::options::{Options, Scheme};

/// A byte stream to the broker.
pub(crate) enum Transport {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Transport {
    /// Connects to the broker the options name. Encrypted schemes never fall back to plaintext.
    pub(crate) async fn connect(opts: &Options) -> io::Result<Transport> {
        let b = &opts.broker;
        let tcp = TcpStream::connect((b.host.as_str(), b.port)).await?;
        tcp.set_nodelay(true)?;
        match b.scheme {
            Scheme::Tcp => Ok(Transport::Tcp(tcp)),
            Scheme::Tls => {
                let config = mqtt_session::tls::client_config(opts, |p| std::fs::read(p))?;
                let name = mqtt_session::tls::server_name(opts)?;
                let tls = TlsConnector::from(Arc::new(config))
                    .connect(name, tcp)
                    .await?;
                Ok(Transport::Tls(Box::new(tls)))
            }
            Scheme::Ws | Scheme::Wss => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "runtime-smol does not speak WebSocket",
            )),
        }
    }

    /// Appends what is available to `buf`; 0 means the peer closed. Cancel-safe: the buffer
    /// only grows by what was read.
    pub(crate) async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        futures_lite::future::poll_fn(|cx| {
            let len = buf.len();
            let room = (buf.capacity() - len).max(4096);
            buf.resize(len + room, 0);
            let dst = &mut buf[len..];
            let polled = match self {
                Transport::Tcp(s) => std::pin::Pin::new(s).poll_read(cx, dst),
                Transport::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, dst),
            };
            let n = match &polled {
                Poll::Ready(Ok(n)) => *n,
                _ => 0,
            };
            buf.truncate(len + n);
            polled
        })
        .await
    }

    /// Writes all of `data`.
    pub(crate) async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Transport::Tcp(s) => s.write_all(data).await,
            Transport::Tls(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
        }
    }

    /// Closes the stream (TLS close_notify, TCP FIN).
    pub(crate) async fn shutdown(&mut self) {
        let _ = match self {
            Transport::Tcp(s) => s.close().await,
            Transport::Tls(s) => s.close().await,
        };
    }
}
