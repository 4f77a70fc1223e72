//! Opening the byte stream to the broker: TCP, TLS (rustls), WebSocket.

use std::io;
use std::sync::Arc;

use bytes::BytesMut;
use mqtt_session::options::{Options, Scheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A byte stream to the broker.
pub(crate) enum Transport {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    #[cfg(feature = "websocket")]
    Ws(Box<ws::Socket>),
}

/// Why the transport could not be opened.
pub(crate) fn io_error(kind: io::ErrorKind, msg: impl Into<String>) -> io::Error {
    io::Error::new(kind, msg.into())
}

impl Transport {
    /// Connects to the broker the options name. Encrypted schemes never fall back to plaintext.
    pub(crate) async fn connect(opts: &Options) -> io::Result<Transport> {
        let b = &opts.broker;
        let tcp = TcpStream::connect((b.host.as_str(), b.port)).await?;
        tcp.set_nodelay(true)?;
        match b.scheme {
            Scheme::Tcp => Ok(Transport::Tcp(tcp)),
            Scheme::Tls => Ok(Transport::Tls(Box::new(tls(opts, tcp).await?))),
            #[cfg(feature = "websocket")]
            Scheme::Ws => Ok(Transport::Ws(Box::new(
                ws::connect(opts, ws::Inner::Tcp(tcp)).await?,
            ))),
            #[cfg(feature = "websocket")]
            Scheme::Wss => {
                let inner = ws::Inner::Tls(Box::new(tls(opts, tcp).await?));
                Ok(Transport::Ws(Box::new(ws::connect(opts, inner).await?)))
            }
            #[cfg(not(feature = "websocket"))]
            Scheme::Ws | Scheme::Wss => Err(io_error(
                io::ErrorKind::Unsupported,
                "WebSocket URLs need the `websocket` feature of runtime-tokio",
            )),
        }
    }

    /// Reads what is available into `buf`; 0 means the peer closed. Cancel-safe.
    pub(crate) async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => s.read_buf(buf).await,
            Transport::Tls(s) => s.read_buf(buf).await,
            #[cfg(feature = "websocket")]
            Transport::Ws(s) => s.read(buf).await,
        }
    }

    /// Writes all of `data`.
    pub(crate) async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Transport::Tcp(s) => s.write_all(data).await,
            Transport::Tls(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
            #[cfg(feature = "websocket")]
            Transport::Ws(s) => s.write(data).await,
        }
    }

    /// Closes the stream (TLS close_notify, WebSocket close frame, TCP FIN).
    pub(crate) async fn shutdown(&mut self) {
        let _ = match self {
            Transport::Tcp(s) => s.shutdown().await,
            Transport::Tls(s) => s.shutdown().await,
            #[cfg(feature = "websocket")]
            Transport::Ws(s) => s.close().await,
        };
    }
}

async fn tls(opts: &Options, tcp: TcpStream) -> io::Result<TlsStream<TcpStream>> {
    let config = mqtt_session::tls::client_config(opts, |p| std::fs::read(p))?;
    let name = mqtt_session::tls::server_name(opts)?;
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

#[cfg(feature = "websocket")]
mod ws {
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::BytesMut;
    use futures_util::{SinkExt, StreamExt};
    use mqtt_session::options::Options;
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio::net::TcpStream;
    use tokio_rustls::client::TlsStream;
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;

    use super::io_error;

    /// The stream under the WebSocket.
    pub(crate) enum Inner {
        Tcp(TcpStream),
        Tls(Box<TlsStream<TcpStream>>),
    }

    impl AsyncRead for Inner {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            match self.get_mut() {
                Inner::Tcp(s) => Pin::new(s).poll_read(cx, buf),
                Inner::Tls(s) => Pin::new(s).poll_read(cx, buf),
            }
        }
    }

    impl AsyncWrite for Inner {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            match self.get_mut() {
                Inner::Tcp(s) => Pin::new(s).poll_write(cx, buf),
                Inner::Tls(s) => Pin::new(s).poll_write(cx, buf),
            }
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            match self.get_mut() {
                Inner::Tcp(s) => Pin::new(s).poll_flush(cx),
                Inner::Tls(s) => Pin::new(s).poll_flush(cx),
            }
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            match self.get_mut() {
                Inner::Tcp(s) => Pin::new(s).poll_shutdown(cx),
                Inner::Tls(s) => Pin::new(s).poll_shutdown(cx),
            }
        }
    }

    /// MQTT over WebSocket: each binary message carries bytes of the MQTT stream.
    pub(crate) struct Socket(WebSocketStream<Inner>);

    fn ws_error(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
        io_error(io::ErrorKind::ConnectionAborted, format!("WebSocket: {e}"))
    }

    pub(crate) async fn connect(opts: &Options, inner: Inner) -> io::Result<Socket> {
        let url = opts.broker.to_string();
        let mut request = url.as_str().into_client_request().map_err(|e| {
            io_error(
                io::ErrorKind::InvalidInput,
                format!("WebSocket URL {url}: {e}"),
            )
        })?;
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
        let (stream, _) = tokio_tungstenite::client_async(request, inner)
            .await
            .map_err(ws_error)?;
        Ok(Socket(stream))
    }

    impl Socket {
        /// Appends the next binary message to `buf`; 0 when the peer closed. Cancel-safe.
        pub(crate) async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
            loop {
                match self.0.next().await {
                    None | Some(Ok(Message::Close(_))) => return Ok(0),
                    Some(Ok(Message::Binary(data))) => {
                        if data.is_empty() {
                            continue;
                        }
                        buf.extend_from_slice(&data);
                        return Ok(data.len());
                    }
                    Some(Ok(Message::Text(_))) => {
                        return Err(io_error(
                            io::ErrorKind::InvalidData,
                            "WebSocket text frame: MQTT uses binary frames",
                        ));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(ws_error(e)),
                }
            }
        }

        pub(crate) async fn write(&mut self, data: &[u8]) -> io::Result<()> {
            self.0
                .send(Message::binary(data.to_vec()))
                .await
                .map_err(ws_error)
        }

        pub(crate) async fn close(&mut self) -> io::Result<()> {
            self.0.close(None).await.map_err(ws_error)
        }
    }
}
