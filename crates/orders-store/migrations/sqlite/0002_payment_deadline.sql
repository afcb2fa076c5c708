-- The payment deadline: when an order still AwaitingPayment is cancelled with reason
-- `payment timeout`. Copied out of `data` (where the snapshot keeps it too) so the due
-- orders are an index range scan. Same fixed-width UTC text as the other timestamps.
-- NULL for orders placed before deadlines existed: they are never due (they wait for
-- Payments as they always did, and can still be cancelled by hand).
ALTER TABLE orders ADD COLUMN payment_due_at TEXT;

-- Only orders still waiting for their payment, so the index is as small as the set of
-- open checkouts and a paid or cancelled order leaves it.
CREATE INDEX orders_payment_due ON orders (payment_due_at)
    WHERE status = 'AwaitingPayment' AND payment_due_at IS NOT NULL;
