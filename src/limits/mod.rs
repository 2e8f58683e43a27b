//! Limit arithmetic: rate windows, quotas, concurrency, priority admission,
//! complexity estimates. Pure logic, unit-tested here; the engine calls it.

mod admission;
pub mod calendar;
mod complexity;
pub mod grant;
pub mod period;
mod rate;
mod tenant;

pub use admission::{share, Admission, AdmissionPermit, BASE_SHARE, MAX_SHARE};
pub use complexity::{estimate, Cost, WorkMeter, ROWS_PER_UNIT};
pub use rate::{RateRejection, RateWindow};
pub use tenant::{
    reservation_step, Admit, Grant, Permit, QuotaCounters, Reservation, TenantLimiter,
    CONCURRENCY_RETRY_MS,
};
