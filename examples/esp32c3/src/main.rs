//! ESP32-C3 over Wi-Fi: an MQTT sensor node.
//!
//! Joins the network named by the `SSID` / `PASSWORD` environment variables at build time
//! (`.cargo/config.toml` has placeholders), takes an address by DHCP, connects to `BROKER`,
//! subscribes to `devices/esp32c3/cmd/#` and publishes a reading at QoS 1 every 5 seconds. Wi-Fi
//! drops are normal: the Wi-Fi task reconnects to the access point, and the MQTT runner
//! reconnects to the broker with back-off and resumes the session (clean start off), so
//! unacknowledged messages are sent again and the subscription holds.
#![no_std]
#![no_main]

use core::time::Duration as CoreDuration;

use defmt::{info, unwrap, warn};
use embassy_executor::Spawner;
use embassy_futures::select::{Either, select};
use embassy_net::tcp::{ConnectError, TcpSocket};
use embassy_net::{IpAddress, IpEndpoint, Ipv4Address, Stack, StackResources};
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_time::{Duration, Timer, with_timeout};
use esp_hal::clock::CpuClock;
use esp_hal::rng::Rng;
use esp_hal::timer::timg::TimerGroup;
use esp_radio::wifi::sta::StationConfig;
use esp_radio::wifi::{
    AuthenticationMethodConfig, Config as WifiConfig, Interface, WifiController,
};
use mqtt_embassy::{
    Backoff, Client, ClientHandle, Config, ConnectOptions, Connector, QoS, Resources, Runner,
};
use mqtt_session::store::Fixed;
use static_cell::StaticCell;
use {esp_backtrace as _, esp_println as _};

esp_bootloader_esp_idf::esp_app_desc!();

const SSID: &str = env!("SSID");
const PASSWORD: &str = env!("PASSWORD");
/// The broker: change to yours.
const BROKER: IpEndpoint =
    IpEndpoint::new(IpAddress::Ipv4(Ipv4Address::new(192, 168, 1, 10)), 1883);
const ID: &str = "esp32c3";

/// Topics and payloads up to 64 bytes, 4 requests / messages in flight.
type Res = Resources<CriticalSectionRawMutex, 64, 64, 4>;
/// 8 queued or in-flight messages in 1 KiB; 4 incoming QoS 2 messages in progress.
type Session = Client<8, 1024, 4>;
type Handle = ClientHandle<'static, CriticalSectionRawMutex, 64, 64, 4>;
type MqttRunner = Runner<'static, CriticalSectionRawMutex, Fixed<8, 1024>, 4, 64, 64, 4>;

/// Keeps the station associated with the access point.
#[embassy_executor::task]
async fn wifi_task(mut controller: WifiController<'static>) {
    loop {
        match controller.connect_async().await {
            Ok(_) => {
                info!("Wi-Fi connected");
                let _ = controller.wait_for_disconnect_async().await;
                warn!("Wi-Fi lost");
                Timer::after_secs(2).await;
            }
            Err(_) => {
                warn!("Wi-Fi connect failed; retrying");
                Timer::after_secs(5).await;
            }
        }
    }
}

#[embassy_executor::task]
async fn net_task(mut runner: embassy_net::Runner<'static, Interface>) -> ! {
    runner.run().await
}

/// Opens a TCP connection to the broker on one socket, reused for every attempt.
struct Tcp {
    stack: Stack<'static>,
    socket: TcpSocket<'static>,
}

impl Connector for Tcp {
    type Transport<'t> = &'t mut TcpSocket<'static>;
    type Error = ConnectError;
    async fn connect(&mut self) -> Result<&mut TcpSocket<'static>, ConnectError> {
        self.socket.abort();
        let _ = self.socket.flush().await;
        // After a Wi-Fi drop, wait for the address again.
        self.stack.wait_config_up().await;
        self.socket.connect(BROKER).await?;
        Ok(&mut self.socket)
    }
}

#[embassy_executor::task]
async fn mqtt_task(mut runner: MqttRunner, tcp: Tcp) {
    runner.run(tcp).await;
}

#[esp_rtos::main]
async fn main(spawner: Spawner) {
    let p = esp_hal::init(esp_hal::Config::default().with_cpu_clock(CpuClock::max()));
    // The Wi-Fi driver allocates.
    esp_alloc::heap_allocator!(size: 72 * 1024);
    let timg0 = TimerGroup::new(p.TIMG0);
    esp_rtos::start(timg0.timer0, p.FROM_CPU_INTR0);
    let rng = Rng::new();

    let Ok(mut controller) = WifiController::new(p.WIFI, Default::default()) else {
        defmt::panic!("Wi-Fi does not start");
    };
    let (Ok(ssid), Ok(password)) = (SSID.try_into(), PASSWORD.try_into()) else {
        defmt::panic!("SSID or password too long");
    };
    let station = StationConfig::default()
        .with_ssid(ssid)
        .with_authentication(AuthenticationMethodConfig::Wpa2Personal(password));
    if controller
        .set_config(&WifiConfig::Station(station))
        .is_err()
    {
        defmt::panic!("bad Wi-Fi configuration");
    }
    spawner.spawn(unwrap!(wifi_task(controller)));

    let seed = u64::from(rng.random()) << 32 | u64::from(rng.random());
    static NET: StaticCell<StackResources<3>> = StaticCell::new();
    let (stack, net_runner) = embassy_net::new(
        Interface::station(),
        embassy_net::Config::dhcpv4(Default::default()),
        NET.init(StackResources::new()),
        seed,
    );
    spawner.spawn(unwrap!(net_task(net_runner)));
    stack.wait_config_up().await;
    if let Some(cfg) = stack.config_v4() {
        info!("address {}", cfg.address);
    }

    static SOCKET_BUFS: StaticCell<([u8; 1024], [u8; 1024])> = StaticCell::new();
    let (srx, stx) = SOCKET_BUFS.init(([0; 1024], [0; 1024]));
    let mut socket = TcpSocket::new(stack, srx, stx);
    socket.set_timeout(Some(Duration::from_secs(60)));

    static RES: StaticCell<Res> = StaticCell::new();
    static SESSION: StaticCell<Session> = StaticCell::new();
    static BUFS: StaticCell<([u8; 1024], [u8; 256])> = StaticCell::new();
    let session = SESSION.init(Client::new(Config {
        keep_alive: 30,
        clean_start: false,
        session_expiry: 3600,
        max_packet_size: 1024,
        inflight: 4,
        ..Config::default()
    }));
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
    spawner.spawn(unwrap!(mqtt_task(runner, Tcp { stack, socket })));
    app(client).await;
}

async fn app(client: Handle) {
    match client
        .subscribe("devices/esp32c3/cmd/#", QoS::AtLeastOnce)
        .await
    {
        Ok(qos) => info!("subscribed, granted {}", qos),
        Err(e) => warn!("subscribe failed: {}", e),
    }
    let mut n = 0u32;
    loop {
        match select(client.receive(), Timer::after_secs(5)).await {
            Either::First(cmd) => {
                info!(
                    "command on {}: {} bytes",
                    cmd.topic.as_str(),
                    cmd.payload.len()
                );
            }
            Either::Second(()) => {
                n = n.wrapping_add(1);
                let mut value: heapless::String<16> = heapless::String::new();
                let _ = core::fmt::write(&mut value, format_args!("{}.{}", 20 + n % 5, n % 10));
                let sent = client.publish(
                    "devices/esp32c3/temperature",
                    value.as_bytes(),
                    QoS::AtLeastOnce,
                    false,
                );
                match with_timeout(Duration::from_secs(10), sent).await {
                    Ok(Ok(())) => info!("published {}", value.as_str()),
                    Ok(Err(e)) => warn!("publish failed: {}", e),
                    Err(_) => warn!("not acknowledged yet; it stays queued"),
                }
            }
        }
    }
}
