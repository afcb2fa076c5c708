//! Identifier value objects. Each id is its own type, so a `PaymentId` can never be
//! passed where an `OrderId` is expected.

use std::{fmt, str::FromStr};

use uuid::Uuid;

use crate::ValidationError;

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

impl EventId {
    /// The id of the `sequence`-th event of an order: a name-based (v5) UUID, so the same
    /// event always gets the same id, deterministically and without randomness.
    #[must_use]
    pub fn for_order_event(order: OrderId, sequence: u64) -> Self {
        Self(Uuid::new_v5(&order.as_uuid(), &sequence.to_be_bytes()))
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
    }
}
