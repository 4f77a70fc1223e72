//! Logging macros: `defmt` under the `defmt` feature, nothing otherwise.
#![allow(unused_macros, reason = "not every level is used in every build")]

#[cfg(feature = "defmt")]
macro_rules! debug {
    ($($t:tt)*) => { ::defmt::debug!($($t)*) };
}
#[cfg(feature = "defmt")]
macro_rules! info {
    ($($t:tt)*) => { ::defmt::info!($($t)*) };
}
#[cfg(feature = "defmt")]
macro_rules! warn {
    ($($t:tt)*) => { ::defmt::warn!($($t)*) };
}
#[cfg(feature = "defmt")]
macro_rules! error {
    ($($t:tt)*) => { ::defmt::error!($($t)*) };
}

#[cfg(not(feature = "defmt"))]
macro_rules! debug {
    ($fmt:literal $(, $arg:expr)* $(,)?) => {{ $( let _ = &$arg; )* }};
}
#[cfg(not(feature = "defmt"))]
macro_rules! info {
    ($fmt:literal $(, $arg:expr)* $(,)?) => {{ $( let _ = &$arg; )* }};
}
#[cfg(not(feature = "defmt"))]
macro_rules! warn {
    ($fmt:literal $(, $arg:expr)* $(,)?) => {{ $( let _ = &$arg; )* }};
}
#[cfg(not(feature = "defmt"))]
macro_rules! error {
    ($fmt:literal $(, $arg:expr)* $(,)?) => {{ $( let _ = &$arg; )* }};
}
