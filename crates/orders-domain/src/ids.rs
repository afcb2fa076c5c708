//! Identifier value objects. Each id is its own type, so a `PaymentId` can never be
//! passed where an `OrderId` is expected.

use std::{fmt, str::FromStr};

use uuid::Uuid;

use crate::{Timestamp, ValidationError};

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        impl $name {
            /// Wraps an existing UUID.
            #[must_use]
            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            /// A new random (v4) id.
            #[must_use]
            pub fn random() -> Self {
                Self(Uuid::new_v4())
            }

            /// The UUID inside.
            #[must_use]
            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = ValidationError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s)
                    .map(Self)
                    .map_err(|_| ValidationError::new($field, "must be a UUID"))
            }
        }

        impl From<Uuid> for $name {
            fn from(uuid: Uuid) -> Self {
                Self(uuid)
            }
        }
    };
}

macro_rules! text_id {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps an id: 1 to 128 characters, no whitespace at the ends,
            /// no control characters.
            ///
            /// # Errors
            /// A [`ValidationError`] naming the field when the text is not a valid id.
            pub fn new(value: impl Into<String>) -> Result<Self, ValidationError> {
                let value = value.into();
                validate_text_id(&value).map_err(|m| ValidationError::new($field, m))?;
                Ok(Self(value))
            }

            /// The id as text.
            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = ValidationError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

fn validate_text_id(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        return Err("must not be empty");
    }
    if value.chars().count() > 128 {
        return Err("must be at most 128 characters");
    }
    if value.trim() != value {
        return Err("must not start or end with whitespace");
    }
    if value.chars().any(char::is_control) {
        return Err("must not contain control characters");
    }
    Ok(())
}

uuid_id!(
    /// Identifies an order. Also the correlation id of every message about it.
    OrderId,
    "orderId"
);
uuid_id!(
    /// Identifies one domain event; the integration message it becomes reuses it as its
    /// message id, so a re-published event keeps its identity.
    EventId,
    "eventId"
);
text_id!(
    /// Identifies a customer (owned by another system, opaque here).
    CustomerId,
    "customerId"
);
text_id!(
    /// Identifies a product (a SKU).
    ProductId,
    "productId"
);
text_id!(
    /// Identifies a payment made by the Payments context.
    PaymentId,
    "paymentId"
);
text_id!(
    /// Identifies a stock reservation made by the Stock context.
    ReservationId,
    "reservationId"
);

impl OrderId {
    /// A new id for an order placed `at`: a UUID v7, whose leading bits are the time in
    /// milliseconds and the rest random. Ids of later orders sort after earlier ones, so
    /// the database indexes keyed by order id grow at their end instead of at random
    /// pages (which is what makes random ids slow to insert).
    #[must_use]
    pub fn time_ordered(at: Timestamp) -> Self {
        let seconds = u64::try_from(at.timestamp()).unwrap_or_default();
        let timestamp =
            uuid::Timestamp::from_unix(uuid::NoContext, seconds, at.timestamp_subsec_nanos());
        Self(Uuid::new_v7(timestamp))
    }
}

impl EventId {
    /// The id of the `sequence`-th event of an order, deterministic (the same event always
    /// gets the same id, without randomness) and ordered like the order ids: a UUID v8
    /// whose first half is the order id's first half (for a [`OrderId::time_ordered`] id,
    /// its creation time) and whose second half is a name-based (v5) hash of the order id
    /// and `sequence`.
    #[must_use]
    pub fn for_order_event(order: OrderId, sequence: u64) -> Self {
        let order = order.as_uuid();
        let hash = Uuid::new_v5(&order, &sequence.to_be_bytes());
        let mut bytes = [0_u8; 16];
        bytes[..8].copy_from_slice(&order.as_bytes()[..8]);
        bytes[8..].copy_from_slice(&hash.as_bytes()[8..]);
        Self(Uuid::new_v8(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_ids_reject_empty_padded_and_control_text() {
        assert!(PaymentId::new("").is_err());
        assert!(PaymentId::new(" p").is_err());
        assert!(PaymentId::new("p\n1").is_err());
        assert!(PaymentId::new("x".repeat(129)).is_err());
        assert_eq!(
            PaymentId::new("pay-1").map(|p| p.to_string()),
            Ok("pay-1".to_owned())
        );
    }

    #[test]
    fn errors_name_the_field() {
        let err = ProductId::new("").unwrap_err();
        assert_eq!(err.field, "productId");
        let err = "nope".parse::<OrderId>().unwrap_err();
        assert_eq!(err.field, "orderId");
    }

    #[test]
    fn event_ids_are_deterministic_and_distinct() {
        let order = OrderId::random();
        assert_eq!(
            EventId::for_order_event(order, 1),
            EventId::for_order_event(order, 1)
        );
        assert_ne!(
            EventId::for_order_event(order, 1),
            EventId::for_order_event(order, 2)
        );
        let other = OrderId::random();
        assert_ne!(
            EventId::for_order_event(order, 1),
            EventId::for_order_event(other, 1)
        );
    }

    #[test]
    fn time_ordered_ids_and_their_event_ids_sort_by_time() {
        use chrono::TimeZone;
        let t0 = chrono::Utc.with_ymd_and_hms(2026, 1, 5, 10, 0, 0).unwrap();
        let mut previous: Option<(OrderId, EventId)> = None;
        for ms in [0, 1, 2, 1000, 60_000] {
            let at = t0 + chrono::Duration::milliseconds(ms);
            let order = OrderId::time_ordered(at);
            assert_eq!(order.as_uuid().get_version_num(), 7);
            let event = EventId::for_order_event(order, 3);
            assert_eq!(event.as_uuid().get_version_num(), 8);
            assert_eq!(
                event.as_uuid().get_timestamp().map(|t| t.to_unix()),
                None,
                "a v8 id carries no timestamp of its own"
            );
            if let Some((earlier_order, earlier_event)) = previous {
                assert!(earlier_order < order, "{earlier_order} < {order}");
                assert!(earlier_event < event, "{earlier_event} < {event}");
            }
            previous = Some((order, event));
        }
        let at = t0 + chrono::Duration::milliseconds(5);
        let (a, b) = (OrderId::time_ordered(at), OrderId::time_ordered(at));
        assert_ne!(a, b, "the same millisecond still gives distinct ids");
    }
}
