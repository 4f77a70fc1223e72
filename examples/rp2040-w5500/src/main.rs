//! Raspberry Pi Pico + WIZnet W5500 Ethernet: an MQTT sensor node.
//!
//! DHCP, then connect to the broker, subscribe to `devices/pico-w5500/cmd/#` and publish a
//! reading at QoS 1 every 5 seconds. The runner reconnects with back-off when the link or the
//! broker goes away and resumes the session (clean start off), so unacknowledged messages are
//! sent again and the subscription holds.
//!
//! Wiring (the W5500-EVB-Pico board): SPI0 SCK=GP18, MOSI=GP19, MISO=GP16, CS=GP17,
//! INT=GP21, RST=GP20. Set `BROKER` to your broker's address.
//!
//! Without the `mqtt` feature the same firmware writes the reading over plain TCP: the size
//! difference between the two builds is what the MQTT crates cost (see `scripts/firmware`).
#![no_std]
#![no_main]

use defmt::{info, unwrap, warn};
use embassy_executor::Spawner;
use embassy_net::tcp::{ConnectError, TcpSocket};
use embassy_net::{IpEndpoint, Ipv4Address, Stack, StackResources};
use embassy_net_wiznet::chip::W5500;
use embassy_net_wiznet::{Device, Runner as WizRunner, State};
use embassy_rp::clocks::RoscRng;
use embassy_rp::gpio::{Input, Level, Output, Pull};
use embassy_rp::peripherals::{DMA_CH0, DMA_CH1, SPI0};
use embassy_rp::spi::{Async, Config as SpiConfig, Spi};
use embassy_rp::{bind_interrupts, dma};
use embassy_time::{Delay, Duration};
use embedded_hal_bus::spi::ExclusiveDevice;
use static_cell::StaticCell;
use {defmt_rtt as _, panic_probe as _};

/// The broker: change to yours.
const BROKER: IpEndpoint = IpEndpoint::new(
    embassy_net::IpAddress::Ipv4(Ipv4Address::new(192, 168, 1, 10)),
    1883,
);

#[cfg(not(feature = "flash-store"))]
bind_interrupts!(struct Irqs {
    DMA_IRQ_0 => dma::InterruptHandler<DMA_CH0>, dma::InterruptHandler<DMA_CH1>;
});
// DMA channel 2 reads the flash journal.
#[cfg(feature = "flash-store")]
bind_interrupts!(struct Irqs {
    DMA_IRQ_0 => dma::InterruptHandler<DMA_CH0>, dma::InterruptHandler<DMA_CH1>,
        dma::InterruptHandler<embassy_rp::peripherals::DMA_CH2>;
});

type EthSpi = ExclusiveDevice<Spi<'static, SPI0, Async>, Output<'static>, Delay>;

#[embassy_executor::task]
async fn ethernet_task(
    runner: WizRunner<'static, W5500, EthSpi, Input<'static>, Output<'static>>,
) -> ! {
    runner.run().await
}

#[embassy_executor::task]
async fn net_task(mut runner: embassy_net::Runner<'static, Device<'static>>) -> ! {
    runner.run().await
}

/// Opens a TCP connection to the broker on one socket, reused for every attempt.
struct Tcp {
    stack: Stack<'static>,
    socket: TcpSocket<'static>,
}

impl Tcp {
    fn new(stack: Stack<'static>) -> Self {
        static RX: StaticCell<[u8; 1024]> = StaticCell::new();
        static TX: StaticCell<[u8; 1024]> = StaticCell::new();
        let mut socket = TcpSocket::new(stack, RX.init([0; 1024]), TX.init([0; 1024]));
        socket.set_timeout(Some(Duration::from_secs(60)));
        Tcp { stack, socket }
    }

    /// Drops what the last attempt left open and connects again (after DHCP, if it was lost).
    async fn open(&mut self) -> Result<&mut TcpSocket<'static>, ConnectError> {
        self.socket.abort();
        let _ = self.socket.flush().await;
        self.stack.wait_config_up().await;
        self.socket.connect(BROKER).await?;
        Ok(&mut self.socket)
    }
}

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    let p = embassy_rp::init(Default::default());
    let mut rng = RoscRng;

    let mut spi_cfg = SpiConfig::default();
    spi_cfg.frequency = 50_000_000;
    let spi = Spi::new(
        p.SPI0, p.PIN_18, p.PIN_19, p.PIN_16, p.DMA_CH0, p.DMA_CH1, Irqs, spi_cfg,
    );
    let cs = Output::new(p.PIN_17, Level::High);
    let int = Input::new(p.PIN_21, Pull::Up);
    let reset = Output::new(p.PIN_20, Level::High);
    // A locally administered address; give each board its own.
    let mac = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
    static WIZ: StaticCell<State<8, 8>> = StaticCell::new();
    let wiz = embassy_net_wiznet::new::<8, 8, W5500, _, _, _>(
        mac,
        WIZ.init(State::new()),
        unwrap!(ExclusiveDevice::new(spi, cs, Delay)),
        int,
        reset,
    )
    .await;
    let Ok((device, wiz_runner)) = wiz else {
        defmt::panic!("the W5500 does not answer");
    };
    spawner.spawn(unwrap!(ethernet_task(wiz_runner)));

    static NET: StaticCell<StackResources<3>> = StaticCell::new();
    let (stack, net_runner) = embassy_net::new(
        device,
        embassy_net::Config::dhcpv4(Default::default()),
        NET.init(StackResources::new()),
        rng.next_u64(),
    );
    spawner.spawn(unwrap!(net_task(net_runner)));

    info!("waiting for DHCP");
    stack.wait_config_up().await;
    if let Some(cfg) = stack.config_v4() {
        info!("address {}", cfg.address);
    }

    #[cfg(feature = "flash-store")]
    let flash = embassy_rp::flash::Flash::new(p.FLASH, p.DMA_CH2, Irqs);
    #[cfg(all(feature = "mqtt", not(feature = "flash-store")))]
    let flash = ();
    #[cfg(feature = "mqtt")]
    mqtt::run(spawner, Tcp::new(stack), rng.next_u64(), flash).await;
    #[cfg(not(feature = "mqtt"))]
    plain::run(Tcp::new(stack)).await;
}

/// A fake sensor: a reading that changes a little each time.
fn reading(n: u32) -> heapless::String<16> {
    use core::fmt::Write;
    let mut s = heapless::String::new();
    let _ = write!(s, "{}.{}", 20 + n % 5, n % 10);
    s
}

#[cfg(feature = "mqtt")]
mod mqtt {
    //! The MQTT client: a runner task and the application loop.
    use super::*;
    use core::time::Duration as CoreDuration;
    use embassy_futures::select::{Either, select};
    use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
    use embassy_time::{Timer, with_timeout};
    use mqtt_embassy::{
        Backoff, Client, ClientHandle, Config, ConnectOptions, Connector, QoS, Resources, Runner,
    };
    use mqtt_session::store::Fixed;

    const ID: &str = "pico-w5500";
    /// Topics up to 64 bytes, payloads up to 64 bytes, 4 requests / messages in flight.
    type Res = Resources<CriticalSectionRawMutex, 64, 64, 4>;
    /// 8 queued or in-flight messages in 1 KiB; 4 incoming QoS 2 messages in progress.
    type Session = Client<8, 1024, 4>;
    type Handle = ClientHandle<'static, CriticalSectionRawMutex, 64, 64, 4>;
    #[cfg(feature = "flash-store")]
    type Flash = embassy_rp::flash::Flash<
        'static,
        embassy_rp::peripherals::FLASH,
        embassy_rp::flash::Async,
        FLASH_SIZE,
    >;
    #[cfg(not(feature = "flash-store"))]
    type Flash = ();
    /// Flash of the Pico's W25Q16.
    #[cfg(feature = "flash-store")]
    const FLASH_SIZE: usize = 2 * 1024 * 1024;
    /// The journal: the last 64 KiB (16 erase pages), kept out of the program by memory.x.
    #[cfg(feature = "flash-store")]
    const JOURNAL: core::ops::Range<u32> = (FLASH_SIZE as u32 - 64 * 1024)..FLASH_SIZE as u32;
    /// Room for the largest record: a stored PUBLISH (64-byte topic and payload) and headers.
    #[cfg(feature = "flash-store")]
    type Journal = mqtt_embassy::flash::FlashJournal<Flash, 320>;
    #[cfg(not(feature = "flash-store"))]
    type Journal = mqtt_embassy::NoJournal;
    type MqttRunner =
        Runner<'static, CriticalSectionRawMutex, Fixed<8, 1024>, 4, 64, 64, 4, Journal>;

    impl Connector for Tcp {
        type Transport<'t> = &'t mut TcpSocket<'static>;
        type Error = ConnectError;
        async fn connect(&mut self) -> Result<&mut TcpSocket<'static>, ConnectError> {
            self.open().await
        }
    }

    #[embassy_executor::task]
    async fn mqtt_task(mut runner: MqttRunner, tcp: Tcp) {
        runner.run(tcp).await;
    }

    pub async fn run(spawner: Spawner, tcp: Tcp, seed: u64, flash: Flash) {
        static RES: StaticCell<Res> = StaticCell::new();
        static SESSION: StaticCell<Session> = StaticCell::new();
        static BUFS: StaticCell<([u8; 1024], [u8; 256])> = StaticCell::new();
        let session = SESSION.init(Client::new(Config {
            keep_alive: 30,
            // Resume the session after a reconnect: unacknowledged messages are sent again.
            clean_start: false,
            session_expiry: 3600,
            max_packet_size: 1024,
            inflight: 4,
            ..Config::default()
        }));
        let journal = journal(session, flash).await;
        let (rx, tx) = BUFS.init(([0; 1024], [0; 256]));
        let options = ConnectOptions {
            client_id: ID,
            ..ConnectOptions::default()
        };
        let backoff = Backoff::new(
            CoreDuration::from_secs(1),
            CoreDuration::from_secs(30),
            seed,
        );
        let (client, runner) = RES
            .init(Resources::new())
            .split(session, options, backoff, rx, tx);
        spawner.spawn(unwrap!(mqtt_task(runner.with_journal(journal), tcp)));
        app(client).await;
    }

    /// Rebuilds the session from the flash journal: what was queued or unacknowledged before
    /// the reset is sent again.
    #[cfg(feature = "flash-store")]
    async fn journal(session: &mut Session, flash: Flash) -> Journal {
        let mut journal = unwrap!(Journal::new(flash, JOURNAL).ok());
        match journal.restore(session).await {
            Ok(r) => info!(
                "journal: {} records restored, {} set aside",
                r.records, r.set_aside
            ),
            Err(e) => {
                // Unreadable: go on, writing anew (sequential-storage repairs what it can).
                warn!("journal unreadable: {}", e);
                session.enable_journal();
            }
        }
        journal
    }

    #[cfg(not(feature = "flash-store"))]
    async fn journal(_session: &mut Session, _flash: Flash) -> Journal {
        mqtt_embassy::NoJournal
    }

    async fn app(client: Handle) {
        match client
            .subscribe("devices/pico-w5500/cmd/#", QoS::AtLeastOnce)
            .await
        {
            Ok(qos) => info!("subscribed, granted {}", qos),
            Err(e) => warn!("subscribe failed: {}", e),
        }
        let mut n = 0u32;
        loop {
            match select(client.receive(), Timer::after_secs(5)).await {
                Either::First(cmd) => info!(
                    "command on {}: {} bytes",
                    cmd.topic.as_str(),
                    cmd.payload.len()
                ),
                Either::Second(()) => {
                    n = n.wrapping_add(1);
                    let value = reading(n);
                    let sent = client.publish(
                        "devices/pico-w5500/temperature",
                        value.as_bytes(),
                        QoS::AtLeastOnce,
                        false,
                    );
                    // While the broker is away the reading waits in the session's queue.
                    match with_timeout(Duration::from_secs(10), sent).await {
                        Ok(Ok(())) => info!("published {}", value.as_str()),
                        Ok(Err(e)) => warn!("publish failed: {}", e),
                        Err(_) => warn!("not acknowledged yet; it stays queued"),
                    }
                }
            }
        }
    }
}

#[cfg(not(feature = "mqtt"))]
mod plain {
    //! The baseline without MQTT: the same reading over a plain TCP connection.
    use super::*;
    use embassy_time::{Timer, with_timeout};
    use embedded_io_async::Write;

    pub async fn run(mut tcp: Tcp) {
        let mut n = 0u32;
        let mut buf = [0u8; 64];
        loop {
            let Ok(socket) = tcp.open().await else {
                Timer::after_secs(1).await;
                continue;
            };
            loop {
                n = n.wrapping_add(1);
                if socket.write_all(reading(n).as_bytes()).await.is_err() {
                    break;
                }
                match with_timeout(Duration::from_secs(5), socket.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(k)) => info!("read {} bytes", k),
                    Err(_) => {}
                }
            }
            warn!("connection lost");
        }
    }
}
