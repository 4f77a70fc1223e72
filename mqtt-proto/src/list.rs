//! The repeated payload entries of SUBSCRIBE, UNSUBSCRIBE, SUBACK and UNSUBACK.
//!
//! Each list is either validated wire bytes (after decoding), iterated lazily, or a caller's
//! slice (for encoding). Both forms iterate to the same items and compare equal by content.

use core::fmt;

use crate::wire::Reader;
use crate::{ReasonCode, SubscriptionOptions, TopicFilter};

/// Reads one entry from bytes validated when the packet was decoded.
trait Entry<'a>: Sized + Copy {
    fn read_valid(r: &mut Reader<'a>) -> Option<Self>;
}

impl<'a> Entry<'a> for (TopicFilter<'a>, SubscriptionOptions) {
    fn read_valid(r: &mut Reader<'a>) -> Option<Self> {
        let filter = TopicFilter::new_unchecked(r.utf8().ok()?);
        let options = SubscriptionOptions::from_checked_byte(r.u8().ok()?);
        Some((filter, options))
    }
}

impl<'a> Entry<'a> for TopicFilter<'a> {
    fn read_valid(r: &mut Reader<'a>) -> Option<Self> {
        Some(TopicFilter::new_unchecked(r.utf8().ok()?))
    }
}

impl<'a> Entry<'a> for ReasonCode {
    fn read_valid(r: &mut Reader<'a>) -> Option<Self> {
        ReasonCode::from_u8(r.u8().ok()?)
    }
}

macro_rules! entry_list {
    ($(#[$doc:meta])* $name:ident, $iter:ident, $item:ty) => {
        $(#[$doc])*
        #[derive(Clone, Copy)]
        pub struct $name<'a>(Repr<'a, $item>);

        impl<'a> $name<'a> {
            /// A list to encode, given as a slice.
            pub const fn new(items: &'a [$item]) -> Self {
                $name(Repr::List(items))
            }

            /// A list of validated wire bytes.
            pub(crate) const fn from_raw(raw: &'a [u8]) -> Self {
                $name(Repr::Raw(raw))
            }

            /// Iterates over the entries in wire order.
            pub fn iter(&self) -> $iter<'a> {
                $iter(match self.0 {
                    Repr::Raw(b) => IterRepr::Raw(Reader::new(b)),
                    Repr::List(l) => IterRepr::List(l.iter()),
                })
            }

            /// Number of entries.
            pub fn len(&self) -> usize {
                match self.0 {
                    Repr::Raw(_) => self.iter().count(),
                    Repr::List(l) => l.len(),
                }
            }

            /// Whether the list has no entries.
            pub fn is_empty(&self) -> bool {
                match self.0 {
                    Repr::Raw(b) => b.is_empty(),
                    Repr::List(l) => l.is_empty(),
                }
            }
        }

        impl PartialEq for $name<'_> {
            fn eq(&self, other: &Self) -> bool {
                self.iter().eq(other.iter())
            }
        }

        impl Eq for $name<'_> {}

        impl fmt::Debug for $name<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_list().entries(self.iter()).finish()
            }
        }

        #[cfg(feature = "defmt")]
        impl defmt::Format for $name<'_> {
            fn format(&self, f: defmt::Formatter<'_>) {
                defmt::write!(f, "[");
                for e in self.iter() {
                    defmt::write!(f, "{}, ", e);
                }
                defmt::write!(f, "]");
            }
        }

        impl<'a> IntoIterator for &$name<'a> {
            type Item = $item;
            type IntoIter = $iter<'a>;
            fn into_iter(self) -> Self::IntoIter {
                self.iter()
            }
        }

        /// Iterator over the entries of a list.
        #[derive(Clone)]
        pub struct $iter<'a>(IterRepr<'a, $item>);

        impl<'a> Iterator for $iter<'a> {
            type Item = $item;
            fn next(&mut self) -> Option<$item> {
                match &mut self.0 {
                    IterRepr::Raw(r) if !r.is_empty() => Entry::read_valid(r),
                    IterRepr::Raw(_) => None,
                    IterRepr::List(it) => it.next().copied(),
                }
            }
        }
    };
}

#[derive(Clone, Copy)]
enum Repr<'a, T> {
    Raw(&'a [u8]),
    List(&'a [T]),
}

#[derive(Clone)]
enum IterRepr<'a, T> {
    Raw(Reader<'a>),
    List(core::slice::Iter<'a, T>),
}

entry_list!(
    /// The topic filters and options of a SUBSCRIBE.
    Filters,
    FiltersIter,
    (TopicFilter<'a>, SubscriptionOptions)
);
entry_list!(
    /// The topic filters of an UNSUBSCRIBE.
    Unsubscriptions,
    UnsubscriptionsIter,
    TopicFilter<'a>
);
entry_list!(
    /// The per-filter results of a SUBACK or UNSUBACK.
    ReasonCodes,
    ReasonCodesIter,
    ReasonCode
);
