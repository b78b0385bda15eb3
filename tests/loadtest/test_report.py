"""The report renderer from hand-made samples: its files, its page, and the series it draws."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pytest

from loadtest.metrics import SLO, RequestSample
from loadtest.report.render import CORE_PLOTS, INDEX, READ_PATHS_PLOT, SNIC_PLOT, write_report
from loadtest.report.series import SnicSeries, nice_bin, snic_rate, time_series

PNG = b"\x89PNG\r\n\x1a\n"


def _sample(
    i: int, sent: float, ttft: float, end: float, path: str | None = None, error: str | None = None
) -> RequestSample:
    return RequestSample(
        agent=f"a{i % 3}",
        turn=i // 3,
        sent_at=sent,
        first_token_at=None if error else sent + ttft,
        second_token_at=None if error else sent + ttft + 0.01,
        end_at=None if error else end,
        output_tokens=11,
        prompt_tokens=1000,
        cached_tokens=900,
        read_path=path,
        error=error,
    )


SAMPLES = [
    _sample(i, 0.1 * i, 0.05 + 0.01 * i, 0.1 * i + 0.5, "pe" if i % 2 else "de") for i in range(20)
] + [_sample(20, 1.0, 0, 0, error="HTTP 503: busy")]


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if tag == "img" and name == "src" and value:
                self.images.append(value)
            if name in ("href", "src") and value and "://" in value:
                self.urls.append(value)


def test_report_files_and_page(tmp_path: Path) -> None:
    snic = [
        SnicSeries("p0", (0.0, 1.0, 2.0), (0.0, 5e9, 5e9), 10e9, 1.0),
        SnicSeries("d0", (0.0, 1.0, 2.0), (0.0, 0.0, 2e9), None, 1.0),
    ]
    report = write_report(
        tmp_path / "r", SAMPLES, SLO(ttft_s=0.2), title="a <test>", snic=snic,
        extra=[("policy", "dualpath-slo")],
    )  # fmt: skip
    names = {p.name for p in report.plots}
    assert names == {*CORE_PLOTS, READ_PATHS_PLOT, SNIC_PLOT}
    for path in report.plots:
        assert path.read_bytes().startswith(PNG)
    page = report.index.read_text()
    links = _Links()
    links.feed(page)
    assert sorted(links.images) == sorted(names)
    assert links.urls == [] and "<script" not in page
    assert "a &lt;test&gt;" in page and "dualpath-slo" in page
    for text in ("TTFT", "TPOT", "goodput", "HTTP 503: busy"):
        assert text in page


def test_no_read_paths_and_no_completed_requests(tmp_path: Path) -> None:
    failed = [_sample(i, 0.1 * i, 0, 0, error="ConnectError") for i in range(3)]
    report = write_report(tmp_path, failed, SLO())
    assert {p.name for p in report.plots} == set(CORE_PLOTS)
    assert (tmp_path / INDEX).exists()
    assert "No read-path share" in report.index.read_text()


def test_read_path_counts_from_elsewhere(tmp_path: Path) -> None:
    plain = [_sample(i, 0.1 * i, 0.05, 0.1 * i + 0.2) for i in range(4)]
    report = write_report(tmp_path, plain, SLO(), read_paths={"pe": 3, "de": 1},
                          read_path_source="server")  # fmt: skip
    assert tmp_path / READ_PATHS_PLOT in report.plots
    assert "read-path share (server)" in report.index.read_text()


def test_time_series_counts_and_in_flight() -> None:
    series = time_series(SAMPLES, target_bins=30)
    assert series.bin_s == nice_bin(2.4, 30) == 0.1
    assert sum(series.completed_rps) * series.bin_s == pytest.approx(20)
    assert sum(series.errors) == 1
    # One request sent every 0.1 s, each in flight 0.5 s: five at a time (an end before a send).
    assert max(series.in_flight_max) == 5
    assert max(series.in_flight_mean) == pytest.approx(5)
    assert sum(series.in_flight_mean) * series.bin_s == pytest.approx(20 * 0.5)


@pytest.mark.parametrize(
    ("span", "bins", "width"), [(0.0, 60, 0.01), (59, 60, 1.0), (61, 60, 2.0), (250, 60, 5.0)]
)
def test_nice_bins(span: float, bins: int, width: float) -> None:
    assert nice_bin(span, bins) == width


def test_snic_rate_is_utilisation_when_the_capacity_is_known() -> None:
    node = SnicSeries("p0", (0.0, 1.0, 3.0), (0.0, 5e9, 5e9), 10e9, time_scale=0.5)
    mids, rates, unit = snic_rate(node)
    assert (mids, rates, unit) == ([0.5, 2.0], [25.0, 0.0], "utilisation (%)")
    _, rates, unit = snic_rate(SnicSeries("p0", (0.0, 2.0), (0.0, 4e9)))
    assert (rates, unit) == ([2.0], "GB/s")
