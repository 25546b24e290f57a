//! Model spend shared by replicas: one row per UTC day and bucket (`total`, or a caller's key),
//! written as increments so charges settled on different replicas add up instead of
//! overwriting each other. The budget itself (caps, reservations, how often to re-read) is
//! cairn's; this file only stores and reads the sums.

use cairn_index::Result;

use crate::connect::{self, pg_error};
use crate::index::PgIndex;

impl PgIndex {
    /// The spend recorded for `day` (days since the Unix epoch, UTC), by bucket, in US dollars.
    pub fn spend_of_day(&self, day: i64) -> Result<Vec<(String, f64)>> {
        let rows = connect::get(self.pool())?
            .query("SELECT bucket, usd FROM spend WHERE day = $1", &[&day])
            .map_err(|e| pg_error("reading today's spend", &e))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Adds each `(bucket, usd)` to `day`'s spend, in one transaction.
    pub fn add_spend(&self, day: i64, charges: &[(&str, f64)]) -> Result<()> {
        let mut conn = connect::get(self.pool())?;
        let mut tx = conn
            .transaction()
            .map_err(|e| pg_error("recording spend", &e))?;
        for (bucket, usd) in charges {
            tx.execute(
                "INSERT INTO spend (day, bucket, usd) VALUES ($1, $2, $3)
                 ON CONFLICT (day, bucket) DO UPDATE SET usd = spend.usd + EXCLUDED.usd",
                &[&day, bucket, usd],
            )
            .map_err(|e| pg_error("recording spend", &e))?;
        }
        tx.commit().map_err(|e| pg_error("recording spend", &e))
    }
}
