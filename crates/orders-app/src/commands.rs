//! Commands (what a client asks) and their validation into domain values.
//! Parse, don't validate: a command becomes domain values or a list of every bad field.

use orders_domain::{
    CancellationReason, Currency, CustomerId, Money, OrderId, OrderItem, ProductId, Quantity,
    ShippingAddress, ValidationError,
};
use rust_decimal::Decimal;
use serde::Deserialize;

/// Place an order (checkout). Field names match the HTTP body.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlaceOrder {
    /// Who orders.
    pub customer_id: String,
    /// ISO 4217 code; every item is priced in it.
    pub currency: String,
    /// The lines.
    pub items: Vec<ItemInput>,
    /// Where it goes.
    pub shipping_address: AddressInput,
}

/// One line of a [`PlaceOrder`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemInput {
    /// The product.
    pub product_id: String,
    /// Units (signed here, so a negative number is reported, not a parse failure).
    pub quantity: i64,
    /// Unit price, exact decimal.
    #[serde(with = "rust_decimal::serde::arbitrary_precision")]
    pub price: Decimal,
}

/// The address of a [`PlaceOrder`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddressInput {
    /// Street and number.
    pub street: String,
    /// City.
    pub city: String,
    /// Postal code.
    pub postal_code: String,
    /// Country.
    pub country: String,
}

/// The validated parts of a [`PlaceOrder`].
pub(crate) struct ValidOrder {
    pub customer_id: CustomerId,
    pub items: Vec<OrderItem>,
    pub address: ShippingAddress,
}

impl PlaceOrder {
    /// Validates every field, collecting every error.
    pub(crate) fn validate(&self) -> Result<ValidOrder, Vec<ValidationError>> {
        let mut errors = Vec::new();
        let customer_id = CustomerId::new(self.customer_id.clone())
            .map_err(|e| errors.push(e))
            .ok();
        let currency = Currency::new(&self.currency)
            .map_err(|e| errors.push(e))
            .ok();
        if self.items.is_empty() {
            errors.push(ValidationError::new(
                "items",
                "must contain at least one item",
            ));
        }
        let mut items = Vec::with_capacity(self.items.len());
        for (i, item) in self.items.iter().enumerate() {
            let at = format!("items[{i}]");
            let product = ProductId::new(item.product_id.clone())
                .map_err(|e| errors.push(e.within(&at)))
                .ok();
            let quantity = u32::try_from(item.quantity)
                .map_err(|_| ValidationError::new("quantity", "must be at least 1"))
                .and_then(Quantity::new)
                .map_err(|e| errors.push(e.within(&at)))
                .ok();
            let price = if item.price.is_sign_negative() && !item.price.is_zero() {
                errors.push(ValidationError::new(
                    format!("{at}.price"),
                    "must not be negative",
                ));
                None
            } else if item.price.scale() > 4 {
                errors.push(ValidationError::new(
                    format!("{at}.price"),
                    "must have at most 4 decimal places",
                ));
                None
            } else {
                currency.and_then(|c| Money::new(item.price, c).ok())
            };
            if let (Some(product), Some(quantity), Some(price)) = (product, quantity, price) {
                items.push(OrderItem::new(product, quantity, price));
            }
        }
        let a = &self.shipping_address;
        let address = ShippingAddress::new(&*a.street, &*a.city, &*a.postal_code, &*a.country)
            .map_err(|es| errors.extend(es.into_iter().map(|e| e.within("shippingAddress"))))
            .ok();
        match (customer_id, address) {
            (Some(customer_id), Some(address)) if errors.is_empty() => Ok(ValidOrder {
                customer_id,
                items,
                address,
            }),
            _ => Err(errors),
        }
    }
}

/// Cancel an order on request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelOrder {
    /// The order.
    pub order_id: OrderId,
    /// Why (free text, required).
    pub reason: String,
}

impl CancelOrder {
    pub(crate) fn validate(&self) -> Result<CancellationReason, Vec<ValidationError>> {
        CancellationReason::new(self.reason.clone()).map_err(|e| vec![e])
    }
}

#[cfg(test)]
mod tests {
    use rust_decimal_macros::dec;

    use super::*;

    fn valid() -> PlaceOrder {
        PlaceOrder {
            customer_id: "c-1".into(),
            currency: "EUR".into(),
            items: vec![ItemInput {
                product_id: "book".into(),
                quantity: 2,
                price: dec!(10.5),
            }],
            shipping_address: AddressInput {
                street: "Main St 1".into(),
                city: "Berlin".into(),
                postal_code: "10115".into(),
                country: "DE".into(),
            },
        }
    }

    fn fields(cmd: &PlaceOrder) -> Vec<String> {
        cmd.validate()
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn a_complete_order_is_valid() {
        assert!(valid().validate().is_ok());
    }

    #[test]
    fn every_bad_field_is_named() {
        let mut cmd = valid();
        cmd.customer_id = String::new();
        cmd.currency = "euro".into();
        cmd.items = vec![
            ItemInput {
                product_id: String::new(),
                quantity: 0,
                price: dec!(-1),
            },
            ItemInput {
                product_id: "ok".into(),
                quantity: -3,
                price: dec!(1),
            },
        ];
        cmd.shipping_address.city = " ".into();
        assert_eq!(
            fields(&cmd),
            [
                "customerId",
                "currency",
                "items[0].productId",
                "items[0].quantity",
                "items[0].price",
                "items[1].quantity",
                "shippingAddress.city"
            ]
        );
    }

    #[test]
    fn an_order_without_items_is_invalid() {
        let mut cmd = valid();
        cmd.items.clear();
        assert_eq!(fields(&cmd), ["items"]);
    }

    #[test]
    fn a_blank_cancellation_reason_is_invalid() {
        let cmd = CancelOrder {
            order_id: OrderId::random(),
            reason: " ".into(),
        };
        assert!(cmd.validate().is_err());
    }
}
