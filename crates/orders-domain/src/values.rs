//! Value objects of an order: quantities, items, shipping address, cancellation reason.

use crate::{Money, ProductId, ValidationError};

/// How many units of a product: at least 1, at most 1,000,000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Quantity(u32);

impl Quantity {
    /// The largest quantity one order line may hold.
    pub const MAX: u32 = 1_000_000;

    /// Validates a quantity.
    ///
    /// # Errors
    /// A [`ValidationError`] on `quantity` when it is 0 or above [`Quantity::MAX`].
    pub fn new(value: u32) -> Result<Self, ValidationError> {
        if value == 0 {
            return Err(ValidationError::new("quantity", "must be at least 1"));
        }
        if value > Self::MAX {
            return Err(ValidationError::new(
                "quantity",
                format!("must be at most {}", Self::MAX),
            ));
        }
        Ok(Self(value))
    }

    /// The number of units.
    #[must_use]
    pub const fn get(&self) -> u32 {
        self.0
    }
}

/// One line of an order: a product, how many, and the unit price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderItem {
    product_id: ProductId,
    quantity: Quantity,
    unit_price: Money,
}

impl OrderItem {
    /// Builds an order line from validated parts.
    #[must_use]
    pub const fn new(product_id: ProductId, quantity: Quantity, unit_price: Money) -> Self {
        Self {
            product_id,
            quantity,
            unit_price,
        }
    }

    /// The product.
    #[must_use]
    pub const fn product_id(&self) -> &ProductId {
        &self.product_id
    }

    /// How many units.
    #[must_use]
    pub const fn quantity(&self) -> Quantity {
        self.quantity
    }

    /// The price of one unit.
    #[must_use]
    pub const fn unit_price(&self) -> Money {
        self.unit_price
    }

    /// Unit price times quantity, or `None` on overflow.
    #[must_use]
    pub fn line_total(&self) -> Option<Money> {
        self.unit_price.checked_mul(self.quantity.get())
    }
}

/// Where the order goes. Every part is required.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShippingAddress {
    street: String,
    city: String,
    postal_code: String,
    country: String,
}

impl ShippingAddress {
    /// Validates an address: every part non-blank and at most 200 characters.
    ///
    /// # Errors
    /// Every invalid part, each a [`ValidationError`] naming its field
    /// (`street`, `city`, `postalCode`, `country`).
    pub fn new(
        street: impl Into<String>,
        city: impl Into<String>,
        postal_code: impl Into<String>,
        country: impl Into<String>,
    ) -> Result<Self, Vec<ValidationError>> {
        let parts = [
            ("street", street.into()),
            ("city", city.into()),
            ("postalCode", postal_code.into()),
            ("country", country.into()),
        ];
        let errors: Vec<_> = parts
            .iter()
            .filter_map(|(field, value)| check_text(field, value).err())
            .collect();
        if !errors.is_empty() {
            return Err(errors);
        }
        let [(_, street), (_, city), (_, postal_code), (_, country)] = parts;
        Ok(Self {
            street,
            city,
            postal_code,
            country,
        })
    }

    /// Street and number.
    #[must_use]
    pub fn street(&self) -> &str {
        &self.street
    }
    /// City.
    #[must_use]
    pub fn city(&self) -> &str {
        &self.city
    }
    /// Postal code.
    #[must_use]
    pub fn postal_code(&self) -> &str {
        &self.postal_code
    }
    /// Country.
    #[must_use]
    pub fn country(&self) -> &str {
        &self.country
    }
}

fn check_text(field: &str, value: &str) -> Result<(), ValidationError> {
    if value.trim().is_empty() {
        return Err(ValidationError::new(field, "must not be blank"));
    }
    if value.chars().count() > 200 {
        return Err(ValidationError::new(
            field,
            "must be at most 200 characters",
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ValidationError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Why an order was cancelled: free text, non-blank, at most 500 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancellationReason(String);

impl CancellationReason {
    /// The reason of an order cancelled because its payment deadline passed.
    pub const PAYMENT_TIMEOUT: &'static str = "payment timeout";

    /// The reason `payment timeout` ([`CancellationReason::PAYMENT_TIMEOUT`]).
    #[must_use]
    pub fn payment_timeout() -> Self {
        Self(Self::PAYMENT_TIMEOUT.to_owned())
    }

    /// Validates a reason.
    ///
    /// # Errors
    /// A [`ValidationError`] on `reason` when it is blank or too long.
    pub fn new(reason: impl Into<String>) -> Result<Self, ValidationError> {
        let reason = reason.into();
        if reason.trim().is_empty() {
            return Err(ValidationError::new("reason", "must not be blank"));
        }
        if reason.chars().count() > 500 {
            return Err(ValidationError::new(
                "reason",
                "must be at most 500 characters",
            ));
        }
        Ok(Self(reason))
    }

    /// The reason as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for CancellationReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantity_must_be_positive_and_bounded() {
        assert!(Quantity::new(0).is_err());
        assert!(Quantity::new(1).is_ok());
        assert!(Quantity::new(Quantity::MAX + 1).is_err());
    }

    #[test]
    fn address_reports_every_blank_part() {
        let errors = ShippingAddress::new("", "Berlin", " ", "DE").unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["street", "postalCode"]);
    }

    #[test]
    fn blank_reason_is_refused() {
        assert!(CancellationReason::new("  ").is_err());
        assert_eq!(
            CancellationReason::new("changed my mind").unwrap().as_str(),
            "changed my mind"
        );
    }
}
