"""Unit tests for asyncq.schedules: crontab arithmetic, DST rules, intervals and persistence."""

from __future__ import annotations

import calendar
import json
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from asyncq import schedules
from asyncq.exceptions import ConfigurationError
from asyncq.schedules import Schedule, crontab, interval, schedule_from

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def instant(moment: datetime) -> datetime:
    """``moment`` in UTC.

    Needed to compare fire times inside a repeated (fall-back) hour: PEP 495 makes such a
    datetime compare unequal to every datetime in another zone, even the same instant.
    """
    return moment.astimezone(UTC)


def fire_times(schedule: Schedule, after: datetime, count: int) -> list[datetime]:
    """The next ``count`` fire times, each computed from the previous one."""
    times: list[datetime] = []
    for _ in range(count):
        after = schedule.next_after(after)
        times.append(after)
    return times


# --- crontab arithmetic in UTC -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "after", "expected"),
    [
        # every 15 minutes
        (crontab(minute="*/15"), utc(2026, 1, 1, 10, 7), utc(2026, 1, 1, 10, 15)),
        (crontab(minute="*/15"), utc(2026, 1, 1, 10, 45), utc(2026, 1, 1, 11, 0)),
        (crontab(minute="*/15"), utc(2026, 1, 1, 23, 50), utc(2026, 1, 2, 0, 0)),
        # weekly, Monday 07:30 (2026-01-01 is a Thursday)
        (crontab(hour=7, minute=30, day_of_week=1), utc(2026, 1, 1, 12), utc(2026, 1, 5, 7, 30)),
        (crontab(hour=7, minute=30, day_of_week=1), utc(2026, 1, 5, 7, 29, 59), utc(2026, 1, 5, 7, 30)),
        (crontab(hour=7, minute=30, day_of_week="mon"), utc(2026, 1, 5, 7, 31), utc(2026, 1, 12, 7, 30)),
        # weekdays: Friday evening and Saturday both lead to Monday
        (crontab(minute=0, hour=9, day_of_week="mon-fri"), utc(2026, 1, 2, 9), utc(2026, 1, 5, 9)),
        (crontab(minute=0, hour=9, day_of_week="mon-fri"), utc(2026, 1, 3, 8), utc(2026, 1, 5, 9)),
        (crontab(minute=0, hour=9, day_of_week="mon-fri"), utc(2026, 1, 6, 8), utc(2026, 1, 6, 9)),
        # a wrapping weekday range: Friday to Monday, skipping Tuesday to Thursday
        (crontab(minute=0, hour=9, day_of_week="fri-mon"), utc(2026, 1, 5, 10), utc(2026, 1, 9, 9)),
        # steps over ranges: minutes 1, 6, ..., 26, then the next hour
        (crontab(minute="1-30/5"), utc(2026, 1, 1, 10, 21), utc(2026, 1, 1, 10, 26)),
        (crontab(minute="1-30/5"), utc(2026, 1, 1, 10, 26), utc(2026, 1, 1, 11, 1)),
        (crontab(minute=0, hour="9-17/4"), utc(2026, 1, 1, 13), utc(2026, 1, 1, 17)),
        (crontab(minute=0, hour="9-17/4"), utc(2026, 1, 1, 17), utc(2026, 1, 2, 9)),
        # lists
        (crontab(minute="0,30", hour="8,20"), utc(2026, 1, 1, 8, 15), utc(2026, 1, 1, 8, 30)),
        (crontab(minute="0,30", hour="8,20"), utc(2026, 1, 1, 20, 30), utc(2026, 1, 2, 8, 0)),
        (crontab(minute=[0, 30], hour=[8, 20]), utc(2026, 1, 1, 9), utc(2026, 1, 1, 20, 0)),
        # month ends: the 31st skips 30-day months and February
        (crontab(minute=0, hour=0, day_of_month=31), utc(2026, 4, 1), utc(2026, 5, 31)),
        (crontab(minute=0, hour=0, day_of_month=31), utc(2026, 1, 31), utc(2026, 3, 31)),
        (crontab(minute=0, hour=0, day_of_month=31), utc(2026, 8, 31), utc(2026, 10, 31)),
        # leap days
        (crontab(minute=0, hour=0, day_of_month=29, month_of_year=2), utc(2025, 3, 1), utc(2028, 2, 29)),
        (crontab(minute=0, hour=0, day_of_month=29, month_of_year=2), utc(2028, 2, 29), utc(2032, 2, 29)),
        # 2100 is not a leap year
        (crontab(minute=0, hour=0, day_of_month=29, month_of_year=2), utc(2096, 3, 1), utc(2104, 2, 29)),
        # year rollover
        (
            crontab(minute=0, hour=0, day_of_month=1, month_of_year=1),
            utc(2026, 12, 31, 23, 59),
            utc(2027, 1, 1),
        ),
        (crontab(minute=0, hour=0), utc(2026, 12, 31, 12), utc(2027, 1, 1)),
        (crontab(minute=0, hour=12, month_of_year="nov-feb"), utc(2026, 3, 1), utc(2026, 11, 1, 12)),
        (
            crontab(minute=0, hour=12, day_of_month=1, month_of_year="dec"),
            utc(2026, 12, 2),
            utc(2027, 12, 1, 12),
        ),
        # every minute, from a time with seconds
        (crontab(), utc(2026, 1, 1, 10, 0, 30), utc(2026, 1, 1, 10, 1)),
    ],
)
def test_next_after_utc(schedule: crontab, after: datetime, expected: datetime) -> None:
    assert schedule.next_after(after) == expected


def test_day_fields_combine_with_and_like_celery() -> None:
    # Friday the 13th: both day fields must match, not either (Vixie cron would fire every Friday too).
    friday_13th = crontab(minute=0, hour=0, day_of_month=13, day_of_week="fri")
    assert fire_times(friday_13th, utc(2026, 1, 1), 3) == [
        utc(2026, 2, 13),
        utc(2026, 3, 13),
        utc(2026, 11, 13),
    ]


def test_leap_day_on_a_weekday_is_found_beyond_eight_years() -> None:
    # Feb 29 falls on a Monday in 2044, sixteen years after 2028.
    leap_monday = crontab(minute=0, hour=0, day_of_month=29, month_of_year=2, day_of_week="mon")
    assert leap_monday.next_after(utc(2028, 3, 1)) == utc(2044, 2, 29)


def test_search_steps_by_field_not_by_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    # The day search asks for each visited month's length once; a minute-by-minute scan over
    # three years would ask (or iterate) over a million times.
    calls = []
    real_monthrange = calendar.monthrange

    def counting_monthrange(year: int, month: int) -> tuple[int, int]:
        calls.append((year, month))
        return real_monthrange(year, month)

    monkeypatch.setattr(schedules, "monthrange", counting_monthrange)
    leap_day = crontab(minute=0, hour=0, day_of_month=29, month_of_year=2)
    assert leap_day.next_after(utc(2025, 3, 1)) == utc(2028, 2, 29)
    assert calls == [(2026, 2), (2027, 2), (2028, 2)]


def test_every_fire_time_is_strictly_after_and_exact_fire_times_advance() -> None:
    schedule = crontab(minute="*/15")
    exact = utc(2026, 1, 1, 10, 15)
    assert schedule.next_after(exact) == utc(2026, 1, 1, 10, 30)
    assert schedule.next_after(exact - timedelta(microseconds=1)) == exact
    assert schedule.next_after(exact + timedelta(microseconds=1)) == utc(2026, 1, 1, 10, 30)
    assert fire_times(schedule, utc(2026, 1, 1, 23, 40), 3) == [
        utc(2026, 1, 1, 23, 45),
        utc(2026, 1, 2, 0, 0),
        utc(2026, 1, 2, 0, 15),
    ]


def test_result_is_in_schedule_zone_whatever_the_input_zone() -> None:
    after = datetime(2026, 1, 1, 17, 0, tzinfo=ZoneInfo("Asia/Tokyo"))  # 08:00 UTC, 09:00 Berlin
    result = crontab(minute=0, hour=10, tz=BERLIN).next_after(after)
    assert result == datetime(2026, 1, 1, 10, 0, tzinfo=BERLIN)
    assert result.tzinfo is BERLIN
    assert crontab(minute=0).next_after(after).tzinfo is UTC


def test_wall_clock_time_in_schedule_zone() -> None:
    # 07:30 Berlin is 06:30 UTC in winter and 05:30 UTC in summer.
    schedule = crontab(minute=30, hour=7, tz="Europe/Berlin")
    assert schedule.next_after(utc(2026, 1, 15)) == utc(2026, 1, 15, 6, 30)
    assert schedule.next_after(utc(2026, 7, 15)) == utc(2026, 7, 15, 5, 30)


# --- DST -----------------------------------------------------------------------------------------


def test_berlin_spring_forward_daily_0230_fires_once_at_0330_cest() -> None:
    # 2026-03-29: clocks jump 02:00 CET -> 03:00 CEST, so 02:30 does not exist.
    schedule = crontab(minute=30, hour=2, tz=BERLIN)
    first, second = fire_times(schedule, utc(2026, 3, 28, 12), 2)
    assert first == utc(2026, 3, 29, 1, 30)
    assert first.replace(tzinfo=None) == datetime(2026, 3, 29, 3, 30)
    assert first.utcoffset() == timedelta(hours=2)
    assert second == utc(2026, 3, 30, 0, 30)


def test_berlin_spring_forward_hourly_fires_once_for_0230_and_0330() -> None:
    schedule = crontab(minute=30, tz=BERLIN)
    assert fire_times(schedule, utc(2026, 3, 28, 23), 4) == [
        utc(2026, 3, 28, 23, 30),  # 00:30 CET
        utc(2026, 3, 29, 0, 30),  # 01:30 CET
        utc(2026, 3, 29, 1, 30),  # 02:30 -> 03:30 CEST, the same instant as 03:30: once
        utc(2026, 3, 29, 2, 30),  # 04:30 CEST
    ]


def test_berlin_spring_forward_shifted_fire_is_not_missed_from_inside_the_shifted_hour() -> None:
    # At 03:45 CEST the shifted 02:50 (= 03:50 CEST) has not fired yet.
    schedule = crontab(minute=50, hour=2, tz=BERLIN)
    assert schedule.next_after(utc(2026, 3, 29, 1, 45)) == utc(2026, 3, 29, 1, 50)
    assert schedule.next_after(utc(2026, 3, 29, 1, 50)) == utc(2026, 3, 30, 0, 50)


def test_half_hour_gap_keeps_fire_times_in_instant_order() -> None:
    # Lord Howe Island jumps 02:00 -> 02:30 on 2026-10-04: 02:20 becomes 02:50, after 02:40.
    schedule = crontab(minute="20,40", hour=2, tz=LORD_HOWE)
    times = fire_times(schedule, utc(2026, 10, 3), 3)
    assert [t.replace(tzinfo=None) for t in times] == [
        datetime(2026, 10, 4, 2, 40),
        datetime(2026, 10, 4, 2, 50),
        datetime(2026, 10, 5, 2, 20),
    ]
    assert all(t.utcoffset() == timedelta(hours=11) for t in times)


def test_berlin_fall_back_daily_0230_fires_once_at_first_occurrence() -> None:
    # 2026-10-25: clocks go back 03:00 CEST -> 02:00 CET, so 02:30 happens twice.
    schedule = crontab(minute=30, hour=2, tz=BERLIN)
    first, second = fire_times(schedule, utc(2026, 10, 24, 12), 2)
    assert instant(first) == utc(2026, 10, 25, 0, 30)
    assert first.replace(tzinfo=None) == datetime(2026, 10, 25, 2, 30)
    assert first.utcoffset() == timedelta(hours=2)
    assert first.fold == 0
    assert second == utc(2026, 10, 26, 1, 30)


def test_berlin_fall_back_hourly_skips_the_repeated_hour() -> None:
    schedule = crontab(minute=30, tz=BERLIN)
    assert [instant(t) for t in fire_times(schedule, utc(2026, 10, 24, 23), 3)] == [
        utc(2026, 10, 24, 23, 30),  # 01:30 CEST
        utc(2026, 10, 25, 0, 30),  # 02:30 CEST, first occurrence
        utc(2026, 10, 25, 2, 30),  # 03:30 CET; 02:30 CET (01:30 UTC) does not fire
    ]
    # From inside the repeated hour's second pass, 02:30 has already fired.
    assert schedule.next_after(utc(2026, 10, 25, 1, 15)) == utc(2026, 10, 25, 2, 30)


@pytest.mark.parametrize(
    ("day", "expected_count"),
    [
        # 23 real hours; the six gap wall times coincide with 03:00-03:50 and fire once with them.
        (datetime(2026, 3, 29), 23 * 6),
        # 25 real hours, but each of the 144 wall times fires once; the repeated hour fires once.
        (datetime(2026, 10, 25), 24 * 6),
        (datetime(2026, 6, 1), 24 * 6),
    ],
)
def test_dst_days_fire_each_wall_time_once_in_increasing_order(day: datetime, expected_count: int) -> None:
    schedule = crontab(minute="*/10", tz=BERLIN)
    start = instant(day.replace(tzinfo=BERLIN)) - timedelta(microseconds=1)
    end = instant((day + timedelta(days=1)).replace(tzinfo=BERLIN))
    times = []
    moment = schedule.next_after(start)
    while instant(moment) < end:
        times.append(instant(moment))
        moment = schedule.next_after(moment)
    assert len(times) == expected_count
    assert times == sorted(set(times))


@pytest.mark.parametrize(
    ("schedule", "after", "expected"),
    [
        # 2026-03-08: 02:00 EST -> 03:00 EDT; 02:30 fires at 03:30 EDT.
        (crontab(minute=30, hour=2, tz=NEW_YORK), utc(2026, 3, 7, 12), utc(2026, 3, 8, 7, 30)),
        (crontab(minute=30, hour=2, tz=NEW_YORK), utc(2026, 3, 8, 7, 30), utc(2026, 3, 9, 6, 30)),
        # 2026-11-01: 02:00 EDT -> 01:00 EST; 01:30 fires at its EDT occurrence only.
        (crontab(minute=30, hour=1, tz=NEW_YORK), utc(2026, 10, 31, 12), utc(2026, 11, 1, 5, 30)),
        (crontab(minute=30, hour=1, tz=NEW_YORK), utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)),
    ],
)
def test_new_york_dst(schedule: crontab, after: datetime, expected: datetime) -> None:
    result = schedule.next_after(after)
    assert instant(result) == expected
    assert result.tzinfo is NEW_YORK


# --- parsing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (crontab(day_of_week="mon-fri"), crontab(day_of_week=[1, 2, 3, 4, 5])),
        (crontab(day_of_week="MON-Fri"), crontab(day_of_week="1-5")),
        (crontab(day_of_week="monday,wednesday"), crontab(day_of_week="mon,wed")),
        (crontab(day_of_week="sun"), crontab(day_of_week=0)),
        (crontab(day_of_week=7), crontab(day_of_week=0)),
        (crontab(day_of_week="5-7"), crontab(day_of_week=[5, 6, 0])),
        (crontab(day_of_week="0-7"), crontab()),
        (crontab(day_of_week="sat-mon"), crontab(day_of_week=[6, 0, 1])),
        (crontab(day_of_week="*/2"), crontab(day_of_week=[0, 2, 4, 6])),
        (crontab(month_of_year="nov-feb"), crontab(month_of_year=[11, 12, 1, 2])),
        (crontab(month_of_year="Jan,jul"), crontab(month_of_year=[1, 7])),
        (crontab(minute="1-30/5"), crontab(minute=[1, 6, 11, 16, 21, 26])),
        (crontab(minute="*/20"), crontab(minute=[0, 20, 40])),
        (crontab(minute="50/5"), crontab(minute=[50, 55])),
        (crontab(minute="50-10/10"), crontab(minute=[50, 0, 10])),
        (crontab(minute=" 0, 30 "), crontab(minute=[0, 30])),
        (crontab(hour="22-2"), crontab(hour=[22, 23, 0, 1, 2])),
        (crontab(day_of_month="*/10"), crontab(day_of_month=[1, 11, 21, 31])),
        (crontab(minute="0-59"), crontab()),
        (crontab(minute={5, 1}), crontab(minute="1,5")),
    ],
)
def test_equivalent_spellings_are_equal(left: crontab, right: crontab) -> None:
    assert left == right
    assert hash(left) == hash(right)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("30 7 * * 1", crontab(minute=30, hour=7, day_of_week=1)),
        ("*/15 * * * *", crontab(minute="*/15")),
        ("0 9 * * mon-fri", crontab(minute=0, hour=9, day_of_week="1-5")),
        ("0 0 1 jan *", crontab(minute=0, hour=0, day_of_month=1, month_of_year=1)),
        ("0 0 13 * fri", crontab(minute=0, hour=0, day_of_month=13, day_of_week=5)),
        ("  5  4   * * *  ", crontab(minute=5, hour=4)),
    ],
)
def test_from_string_matches_keyword_form(expression: str, expected: crontab) -> None:
    parsed = crontab.from_string(expression)
    assert parsed == expected
    assert parsed.next_after(utc(2026, 1, 1)) == expected.next_after(utc(2026, 1, 1))


def test_from_string_accepts_tz() -> None:
    schedule = crontab.from_string("30 7 * * *", tz="Europe/Berlin")
    assert schedule.tz is BERLIN
    assert schedule.next_after(utc(2026, 1, 15)) == utc(2026, 1, 15, 6, 30)


def test_different_schedules_or_zones_are_not_equal() -> None:
    assert crontab(minute=0) != crontab(minute=1)
    assert crontab(minute=0) != crontab(minute=0, tz=BERLIN)
    assert crontab(minute=0, tz="Europe/Berlin") == crontab(minute=0, tz=BERLIN)
    other_kind: object = interval(60)
    assert crontab(minute=0) != other_kind


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"minute": 61}, "invalid crontab field minute='61': value 61 out of range 0-59"),
        ({"minute": -1}, "invalid crontab field minute='-1'"),
        ({"minute": "0-60"}, "invalid crontab field minute='0-60': value 60 out of range 0-59"),
        ({"hour": 24}, "invalid crontab field hour='24': value 24 out of range 0-23"),
        ({"hour": "1-24"}, "invalid crontab field hour='1-24': value 24 out of range 0-23"),
        ({"day_of_week": 8}, "invalid crontab field day_of_week='8': value 8 out of range 0-7"),
        (
            {"day_of_week": "funday"},
            "invalid crontab field day_of_week='funday': 'funday' is not a number or",
        ),
        ({"day_of_month": 0}, "invalid crontab field day_of_month='0': value 0 out of range 1-31"),
        ({"day_of_month": 32}, "invalid crontab field day_of_month='32': value 32 out of range 1-31"),
        ({"month_of_year": 13}, "invalid crontab field month_of_year='13': value 13 out of range 1-12"),
        ({"month_of_year": 0}, "invalid crontab field month_of_year='0': value 0 out of range 1-12"),
        ({"month_of_year": "foo"}, "invalid crontab field month_of_year='foo'"),
        ({"minute": "mon"}, "invalid crontab field minute='mon': 'mon' is not a number"),
        ({"minute": "*/0"}, "invalid crontab field minute='*/0': step '0' is not a positive integer"),
        ({"minute": "*/x"}, "invalid crontab field minute='*/x': step 'x' is not a positive integer"),
        ({"minute": "1-"}, "invalid crontab field minute='1-'"),
        ({"minute": "1,,2"}, "invalid crontab field minute='1,,2': empty value"),
        ({"minute": ""}, "invalid crontab field minute='': empty value"),
        ({"hour": "\u0663"}, "invalid crontab field hour="),  # an Arabic-Indic digit is not a cron number
        ({"minute": True}, "invalid crontab field minute=True"),
        ({"minute": 1.5}, "invalid crontab field minute=1.5"),
        ({"minute": []}, "invalid crontab field minute=[]"),
        ({"minute": [1, "x"]}, "invalid crontab field minute=[1, 'x']"),
        ({"minute": [60]}, "invalid crontab field minute='60': value 60 out of range 0-59"),
        ({"day_of_month": 31, "month_of_year": 2}, "day_of_month='31' never occurs in month_of_year='2'"),
        ({"day_of_month": "30,31", "month_of_year": "feb"}, "day_of_month='30,31'"),
        ({"day_of_month": 31, "month_of_year": "apr,jun,sep,nov"}, "crontab can never fire"),
        ({"tz": "Mars/Olympus_Mons"}, "invalid crontab tz='Mars/Olympus_Mons': unknown time zone"),
        ({"tz": UTC}, "invalid crontab tz="),
    ],
)
def test_invalid_crontab_raises_configuration_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        crontab(**kwargs)
    assert message in str(excinfo.value)


def test_rare_but_possible_crontab_is_accepted() -> None:
    # February 30 never exists, but February 29 does: only the impossible days are dropped.
    schedule = crontab(minute=0, hour=0, day_of_month="29,30", month_of_year=2)
    assert schedule.next_after(utc(2026, 1, 1)) == utc(2028, 2, 29)


@pytest.mark.parametrize("expression", ["* * * *", "* * * * * *", "", "0 0"])
def test_from_string_wrong_field_count(expression: str) -> None:
    with pytest.raises(ConfigurationError, match="minute hour day_of_month month_of_year day_of_week"):
        crontab.from_string(expression)


def test_from_string_bad_field_names_the_field() -> None:
    with pytest.raises(ConfigurationError, match=r"invalid crontab field day_of_month='32'"):
        crontab.from_string("0 0 32 * *")


@pytest.mark.parametrize("schedule", [crontab(), interval(60)])
def test_naive_datetime_is_rejected(schedule: Schedule) -> None:
    with pytest.raises(ValueError, match="next_after needs an aware datetime"):
        schedule.next_after(datetime(2026, 1, 1))


# --- interval ------------------------------------------------------------------------------------


def test_interval_accepts_timedelta_int_and_float() -> None:
    assert interval(timedelta(minutes=5)) == interval(300) == interval(300.0)
    assert interval(2.5).period == timedelta(seconds=2.5)
    assert interval(2.5).next_after(utc(2026, 1, 1)) == utc(2026, 1, 1) + timedelta(seconds=2.5)


def test_interval_keeps_after_zone_without_tz_and_converts_with_tz() -> None:
    after = datetime(2026, 1, 1, 12, 0, tzinfo=NEW_YORK)
    plain = interval(300).next_after(after)
    assert plain == datetime(2026, 1, 1, 12, 5, tzinfo=NEW_YORK)
    assert plain.tzinfo is NEW_YORK
    zoned = interval(300, tz=BERLIN).next_after(after)
    assert zoned == after + timedelta(minutes=5)
    assert zoned.tzinfo is BERLIN
    assert zoned.replace(tzinfo=None) == datetime(2026, 1, 1, 18, 5)


def test_interval_counts_elapsed_time_across_dst() -> None:
    before_gap = datetime(2026, 3, 29, 1, 58, tzinfo=BERLIN)  # CET
    result = interval(timedelta(minutes=5)).next_after(before_gap)
    assert result.replace(tzinfo=None) == datetime(2026, 3, 29, 3, 3)
    # Subtracting two datetimes that share a zone measures wall time, so compare instants.
    assert instant(result) - instant(before_gap) == timedelta(minutes=5)


@pytest.mark.parametrize(
    "period", [0, -1, 0.0, timedelta(0), timedelta(seconds=-5), float("nan"), float("inf"), True, "300", None]
)
def test_invalid_interval(period: Any) -> None:
    with pytest.raises(ConfigurationError, match="interval period"):
        interval(period)


def test_interval_bad_tz() -> None:
    with pytest.raises(ConfigurationError, match="invalid interval tz='Nowhere/Land'"):
        interval(60, tz="Nowhere/Land")


# --- repr, with_tz, persistence ------------------------------------------------------------------


def test_repr() -> None:
    assert repr(crontab(minute="*/15")) == (
        "crontab(minute='*/15', hour='*', day_of_week='*', day_of_month='*', month_of_year='*')"
    )
    assert repr(crontab(hour=7, minute=30, day_of_week="Mon-Fri", tz=BERLIN)) == (
        "crontab(minute='30', hour='7', day_of_week='mon-fri', day_of_month='*', month_of_year='*', "
        "tz='Europe/Berlin')"
    )
    assert repr(interval(300)) == "interval(300.0)"
    assert repr(interval(2.5, tz="UTC")) == "interval(2.5, tz='UTC')"


@pytest.mark.parametrize("schedule", [crontab(minute=0), interval(60)])
def test_with_tz_sets_zone_only_when_missing(schedule: crontab | interval) -> None:
    zoned = schedule.with_tz("Europe/Berlin")
    assert zoned.tz is BERLIN
    assert zoned != schedule
    assert schedule.tz is None  # the original is untouched
    assert zoned.with_tz(NEW_YORK) is zoned
    assert schedule.with_tz(None) is schedule


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        (
            crontab(minute="*/15", tz="Europe/Berlin"),
            {
                "type": "crontab",
                "minute": "*/15",
                "hour": "*",
                "day_of_week": "*",
                "day_of_month": "*",
                "month_of_year": "*",
                "tz": "Europe/Berlin",
            },
        ),
        (
            crontab(minute=30, hour=7, day_of_week=[1, 3]),
            {
                "type": "crontab",
                "minute": "30",
                "hour": "7",
                "day_of_week": "1,3",
                "day_of_month": "*",
                "month_of_year": "*",
            },
        ),
        (interval(300), {"type": "interval", "seconds": 300.0}),
        (
            interval(timedelta(hours=1), tz=NEW_YORK),
            {"type": "interval", "seconds": 3600.0, "tz": "America/New_York"},
        ),
    ],
)
def test_to_dict_and_back(schedule: crontab | interval, expected: dict[str, Any]) -> None:
    data = schedule.to_dict()
    assert data == expected
    restored = schedule_from(json.loads(json.dumps(data)))
    assert restored == schedule
    assert repr(restored) == repr(schedule)
    assert type(schedule).from_dict(data) == schedule


def test_crontab_from_dict_defaults_missing_fields() -> None:
    assert crontab.from_dict({"type": "crontab", "minute": "0"}) == crontab(minute=0)


@pytest.mark.parametrize(
    ("factory", "data", "message"),
    [
        (crontab.from_dict, {"type": "interval", "seconds": 5}, "expected a 'crontab' schedule dict"),
        (
            crontab.from_dict,
            {"type": "crontab", "minutes": "0"},
            "unknown keys in crontab schedule dict: minutes",
        ),
        (crontab.from_dict, {"type": "crontab", "minute": "99"}, "invalid crontab field minute='99'"),
        (interval.from_dict, {"type": "interval"}, "needs a 'seconds' key"),
        (interval.from_dict, {"type": "interval", "seconds": -1}, "interval period must be positive"),
        (interval.from_dict, {"type": "crontab"}, "expected a 'interval' schedule dict"),
    ],
)
def test_from_dict_errors(factory: Any, data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        factory(data)


# --- schedule_from -------------------------------------------------------------------------------


class EveryDay:
    """A user-defined schedule that only satisfies the protocol."""

    tz: ZoneInfo | None = None

    def next_after(self, after: datetime) -> datetime:
        return after + timedelta(days=1)

    def with_tz(self, tz: ZoneInfo | str | None) -> EveryDay:
        return self


@pytest.mark.parametrize("schedule", [crontab(minute=0), interval(5), EveryDay()])
def test_schedule_from_passes_schedules_through(schedule: Schedule) -> None:
    assert isinstance(schedule, Schedule)
    assert schedule_from(schedule) is schedule


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (timedelta(minutes=5), interval(300)),
        (300, interval(300)),
        (2.5, interval(2.5)),
        ({"type": "interval", "seconds": 60}, interval(60)),
        ({"type": "crontab", "minute": "*/15"}, crontab(minute="*/15")),
    ],
)
def test_schedule_from_coerces(value: object, expected: Schedule) -> None:
    assert schedule_from(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("*/5 * * * *", "cannot use"),
        (None, "cannot use None"),
        (True, "cannot use True"),
        (object(), "cannot use"),
        ({"type": "solar"}, "unknown schedule type 'solar'"),
        ({"seconds": 5}, "unknown schedule type None"),
        (0, "interval period must be positive"),
    ],
)
def test_schedule_from_rejects(value: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        schedule_from(value)
