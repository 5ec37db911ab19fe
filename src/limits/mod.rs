//! Per-follower limits as a pure policy: `decide(limits, usage)` says whether a painting request is admitted, and
//! if not, which limit refused it. The store enforces the decision atomically inside its admission transaction
//! (the follower's usage row is locked while deciding), so concurrent messages from one follower at the edge of a
//! quota admit exactly the quota. Days are counted in Asia/Shanghai.

use time::macros::offset;
use time::{Date, OffsetDateTime};

/// The limits that apply to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// Requests per follower per day; 0 = unlimited.
    pub per_day: u32,
    /// Requests per follower per minute (a fixed clock minute); 0 = unlimited.
    pub per_minute: u32,
    /// Jobs a follower may have queued or painting at once; 0 = unlimited.
    pub in_flight: u32,
    /// Requests per day for the request's campaign, all followers together; 0 = no cap.
    pub campaign_per_day: u32,
    /// Queued jobs (everyone's) above which requests are turned away as busy; 0 = never.
    pub busy_queue: u32,
}

/// What the follower (and the service) used so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// The follower's requests admitted today.
    pub today: i64,
    /// The follower's requests admitted this minute.
    pub this_minute: i64,
    /// The follower's jobs queued or painting.
    pub in_flight: i64,
    /// The campaign's requests admitted today.
    pub campaign_today: i64,
    /// Jobs queued now.
    pub queued: i64,
}

/// How a follower is listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// On the allow list: no limits.
    Allowed,
    /// On the deny list: never admitted.
    Denied,
    /// Neither.
    Normal,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// On the deny list.
    Denied,
    /// The daily quota is used up.
    PerDay(u32),
    /// Too many this minute.
    PerMinute(u32),
    /// Too many queued or painting.
    InFlight(u32),
    /// The campaign's daily cap is reached.
    CampaignCap(u32),
    /// The queue is too deep.
    Busy,
}

impl Refused {
    /// The name recorded in `inbound_messages.decision`: `busy` for backpressure, `limited` otherwise.
    pub fn decision(self) -> &'static str {
        match self {
            Refused::Busy => "busy",
            _ => "limited",
        }
    }

    /// A short name for the detail column and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Refused::Denied => "denied",
            Refused::PerDay(_) => "per_day",
            Refused::PerMinute(_) => "per_minute",
            Refused::InFlight(_) => "in_flight",
            Refused::CampaignCap(_) => "campaign_cap",
            Refused::Busy => "busy",
        }
    }
}

/// Decides one request.
pub fn decide(limits: &Limits, usage: &Usage, listing: Listing) -> Result<(), Refused> {
    let over = |limit: u32, used: i64| limit > 0 && used >= i64::from(limit);
    match listing {
        Listing::Allowed => return Ok(()),
        Listing::Denied => return Err(Refused::Denied),
        Listing::Normal => {}
    }
    if over(limits.busy_queue, usage.queued) {
        return Err(Refused::Busy);
    }
    if over(limits.per_day, usage.today) {
        return Err(Refused::PerDay(limits.per_day));
    }
    if over(limits.per_minute, usage.this_minute) {
        return Err(Refused::PerMinute(limits.per_minute));
    }
    if over(limits.in_flight, usage.in_flight) {
        return Err(Refused::InFlight(limits.in_flight));
    }
    if over(limits.campaign_per_day, usage.campaign_today) {
        return Err(Refused::CampaignCap(limits.campaign_per_day));
    }
    Ok(())
}

/// The day `now` falls on in Asia/Shanghai.
pub fn shanghai_day(now: OffsetDateTime) -> Date {
    now.to_offset(offset!(+8)).date()
}

/// Minutes since the Unix epoch (the per-minute window).
pub fn minute(now: OffsetDateTime) -> i64 {
    now.unix_timestamp().div_euclid(60)
}

/// Days since the Unix epoch of the Shanghai day of `now` (the per-day window, as stored).
pub fn day_number(now: OffsetDateTime) -> i64 {
    i64::from(shanghai_day(now).to_julian_day())
        - i64::from(time::macros::date!(1970 - 01 - 01).to_julian_day())
}

/// When the Shanghai day of `now` began, as a UTC instant.
pub fn day_start(now: OffsetDateTime) -> OffsetDateTime {
    shanghai_day(now)
        .midnight()
        .assume_offset(offset!(+8))
        .to_offset(offset!(UTC))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn limits_refuse_in_order_and_zero_means_unlimited() {
        let limits = Limits {
            per_day: 5,
            per_minute: 2,
            in_flight: 3,
            campaign_per_day: 100,
            busy_queue: 1000,
        };
        let fresh = Usage::default();
        assert_eq!(decide(&limits, &fresh, Listing::Normal), Ok(()));
        let at = |f: fn(&mut Usage)| {
            let mut u = fresh;
            f(&mut u);
            decide(&limits, &u, Listing::Normal)
        };
        assert_eq!(at(|u| u.today = 4), Ok(()));
        assert_eq!(at(|u| u.today = 5), Err(Refused::PerDay(5)));
        assert_eq!(at(|u| u.this_minute = 2), Err(Refused::PerMinute(2)));
        assert_eq!(at(|u| u.in_flight = 3), Err(Refused::InFlight(3)));
        assert_eq!(
            at(|u| u.campaign_today = 100),
            Err(Refused::CampaignCap(100))
        );
        assert_eq!(at(|u| u.queued = 1000), Err(Refused::Busy));
        assert_eq!(
            at(|u| {
                u.queued = 5000;
                u.today = 99
            }),
            Err(Refused::Busy),
            "backpressure first: the quota is not the problem"
        );
        let everything = Usage {
            today: 99,
            this_minute: 99,
            in_flight: 99,
            campaign_today: 9999,
            queued: 99999,
        };
        assert_eq!(decide(&limits, &everything, Listing::Allowed), Ok(()));
        assert_eq!(
            decide(&limits, &fresh, Listing::Denied),
            Err(Refused::Denied)
        );
        assert_eq!(
            decide(&Limits::default(), &everything, Listing::Normal),
            Ok(())
        );
    }

    #[test]
    fn days_turn_at_midnight_in_shanghai() {
        // 15:59:59 UTC is 23:59:59 in Shanghai; one second later the Shanghai day changes.
        let before = datetime!(2027-09-14 15:59:59 UTC);
        let after = datetime!(2027-09-14 16:00:00 UTC);
        assert_eq!(shanghai_day(before), time::macros::date!(2027 - 09 - 14));
        assert_eq!(shanghai_day(after), time::macros::date!(2027 - 09 - 15));
        assert_eq!(day_number(after) - day_number(before), 1);
        assert_eq!(day_start(after), after);
        assert_eq!(day_start(before), datetime!(2027-09-13 16:00:00 UTC));
        assert_eq!(day_number(datetime!(1970-01-01 00:00 +08:00)), 0);
        assert_eq!(minute(datetime!(1970-01-01 00:01:59 UTC)), 1);
        assert_eq!(minute(datetime!(1969-12-31 23:59:59 UTC)), -1);
    }
}
