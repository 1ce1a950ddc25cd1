//! Times as people read them, in the operator's time zone
//! (`branding.timezone`; the zone data is compiled into riegel, so nothing
//! is read from the system): "2. Dezember 2026 um 14:05 Uhr" as Austrians
//! write it (with "Jänner"), "2 December 2026, 14:05" in English.

use jiff::tz::TimeZone;

use crate::clock::UnixTime;
use crate::config::Language;

const MONTHS_DE: [&str; 12] =
    ["Jänner", "Februar", "März", "April", "Mai", "Juni", "Juli", "August", "September", "Oktober", "November", "Dezember"];
const MONTHS_EN: [&str; 12] =
    ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];

/// The zone of `name` from the compiled-in data; UTC if unknown (the
/// configuration has already refused unknown names).
pub(crate) fn zone(name: &str) -> TimeZone {
    jiff::tz::db().get(name).unwrap_or(TimeZone::UTC)
}

/// Date and time of `t` in `tz`.
pub(crate) fn date_time(t: UnixTime, tz: &TimeZone, lang: Language) -> String {
    let Ok(ts) = jiff::Timestamp::from_second(t) else { return String::new() };
    let z = tz.to_datetime(ts);
    let month = usize::try_from(z.month()).unwrap_or(1).clamp(1, 12) - 1;
    match lang {
        Language::De => format!("{}. {} {} um {:02}:{:02} Uhr", z.day(), MONTHS_DE[month], z.year(), z.hour(), z.minute()),
        Language::En => format!("{} {} {}, {:02}:{:02}", z.day(), MONTHS_EN[month], z.year(), z.hour(), z.minute()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn austrian_and_english_dates_in_the_operators_zone() {
        let vienna = zone("Europe/Vienna");
        // 2026-12-02 13:05 UTC is 14:05 in Vienna (winter time).
        let t = 1_796_216_700;
        assert_eq!(date_time(t, &vienna, Language::De), "2. Dezember 2026 um 14:05 Uhr");
        assert_eq!(date_time(t, &vienna, Language::En), "2 December 2026, 14:05");
        // Summer time, and January as Austrians write it.
        assert_eq!(date_time(1_783_000_000, &vienna, Language::De), "2. Juli 2026 um 15:46 Uhr");
        assert_eq!(date_time(1_767_225_600, &vienna, Language::De), "1. Jänner 2026 um 01:00 Uhr");
        assert_eq!(date_time(1_767_225_600, &zone("America/New_York"), Language::En), "31 December 2025, 19:00");
        assert_eq!(date_time(1_767_225_600, &zone("Mars/Olympus"), Language::En), "1 January 2026, 00:00");
        assert_eq!(date_time(i64::MAX, &vienna, Language::De), "");
    }
}
