//! Money: an exact decimal amount in an ISO 4217 currency. Never binary floating point.

use std::{fmt, str::FromStr};

use rust_decimal::Decimal;

use crate::ValidationError;

/// An ISO 4217 alphabetic currency code: exactly three ASCII uppercase letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency([u8; 3]);

impl Currency {
    /// Validates a currency code such as `EUR`.
    ///
    /// # Errors
    /// A [`ValidationError`] on anything but three uppercase ASCII letters.
    pub fn new(code: &str) -> Result<Self, ValidationError> {
        match code.as_bytes() {
            [a, b, c] if [a, b, c].iter().all(|x| x.is_ascii_uppercase()) => Ok(Self([*a, *b, *c])),
            _ => Err(ValidationError::new(
                "currency",
                "must be an ISO 4217 code of three uppercase letters",
            )),
        }
    }

    /// The code as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        // Only ever built from ASCII letters, so this cannot fail.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Currency {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A non-negative exact amount in one currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Money {
    amount: Decimal,
    currency: Currency,
}

impl Money {
    /// Builds an amount; negative amounts are refused.
    ///
    /// # Errors
    /// A [`ValidationError`] on `amount` when it is negative.
    pub fn new(amount: Decimal, currency: Currency) -> Result<Self, ValidationError> {
        if amount.is_sign_negative() && !amount.is_zero() {
            return Err(ValidationError::new("amount", "must not be negative"));
        }
        Ok(Self {
            amount: amount.normalize(),
            currency,
        })
    }

    /// Zero in `currency`.
    #[must_use]
    pub fn zero(currency: Currency) -> Self {
        Self {
            amount: Decimal::ZERO,
            currency,
        }
    }

    /// The amount.
    #[must_use]
    pub const fn amount(&self) -> Decimal {
        self.amount
    }

    /// The currency.
    #[must_use]
    pub const fn currency(&self) -> Currency {
        self.currency
    }

    /// The sum, or `None` on a currency mismatch or overflow.
    #[must_use]
    pub fn checked_add(&self, other: &Self) -> Option<Self> {
        if self.currency != other.currency {
            return None;
        }
        Some(Self {
            amount: self.amount.checked_add(other.amount)?.normalize(),
            currency: self.currency,
        })
    }

    /// The amount times a whole number, or `None` on overflow.
    #[must_use]
    pub fn checked_mul(&self, times: u32) -> Option<Self> {
        Some(Self {
            amount: self.amount.checked_mul(Decimal::from(times))?.normalize(),
            currency: self.currency,
        })
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.amount, self.currency)
    }
}

#[cfg(test)]
mod tests {
    use rust_decimal_macros::dec;

    use super::*;

    fn eur() -> Currency {
        Currency::new("EUR").unwrap()
    }

    #[test]
    fn currency_accepts_only_three_uppercase_letters() {
        assert!(Currency::new("EUR").is_ok());
        for bad in ["eur", "EURO", "EU", "", "E1R", "ÉUR"] {
            assert!(Currency::new(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn money_is_exact_decimal() {
        let a = Money::new(dec!(0.1), eur()).unwrap();
        let b = Money::new(dec!(0.2), eur()).unwrap();
        assert_eq!(a.checked_add(&b).unwrap().amount(), dec!(0.3));
    }

    #[test]
    fn equal_amounts_compare_equal_whatever_their_scale() {
        assert_eq!(
            Money::new(dec!(10.50), eur()).unwrap(),
            Money::new(dec!(10.5), eur()).unwrap()
        );
    }

    #[test]
    fn negative_money_is_refused_and_mixed_currencies_do_not_add() {
        assert!(Money::new(dec!(-0.01), eur()).is_err());
        let usd = Money::new(dec!(1), Currency::new("USD").unwrap()).unwrap();
        assert!(Money::zero(eur()).checked_add(&usd).is_none());
    }
}
