"""Every printed table goes through avatar.tables: columns apart and aligned, numbers rounded, whatever the
values (a stage that took no time, a margin of many digits, wide characters)."""

from __future__ import annotations

from avatar.tables import format_number, format_table


def _columns(line: str) -> list[str]:
    return [cell.strip() for cell in line.split("  ") if cell.strip()]


def test_rows_with_different_columns_line_up():
    text = format_table([{"name": "a", "fps": 123.456}, {"name": "longer name", "ms": 2.0, "fps": None}], "== title")
    title, header, rule, first, second = text.splitlines()
    assert title == "== title" and header.split() == ["name", "fps", "ms"] and set(rule) == {"-"}
    assert first.split() == ["a", "123.5", "-"] and second.split() == ["longer", "name", "-", "2"]
    assert first.index("123.5") + len("123.5") == header.index("fps") + len("fps")  # numbers right-aligned


def test_numbers_are_rounded_to_what_can_be_read():
    cases = {
        1.0326108932495117: "1.033",
        0.0025: "0.0025",
        28.34567: "28.35",
        1234.56: "1235",
        2.5e11: "2.5e+11",
        0.00012345: "0.000123",
        0.0: "0",
        float("nan"): "nan",
    }
    assert {value: format_number(value) for value in cases} == cases
    assert format_table([{"n": 3, "ok": True, "d": {"a": 0.123456}}]).splitlines()[-1].split() == [
        "3",
        "True",
        "a=0.1235",
    ]


def test_wide_characters_keep_their_column():
    lines = format_table([{"name": "日本語", "ms": 1.0}, {"name": "abc", "ms": 22.0}]).splitlines()
    assert lines[2].endswith(" 1") and lines[3].endswith("22") and len(lines[3]) == len(lines[2]) + 3  # 2 cells each


def test_the_render_timings_of_a_silent_clip():
    from avatar.render.video import StageTimer

    timer = StageTimer()
    timer.seconds = {"audio features": 0.0213, "phone decoding": 0.0, "render": 3.7}
    lines = timer.report(250, 10.0, 4.0).splitlines()
    assert lines[0] == "250 frames (10.00 s of audio) in 4.0 s, 2.50x real time"
    assert _columns(lines[1]) == ["stage", "seconds", "frames/s"]
    rows = {_columns(line)[0]: _columns(line)[1:] for line in lines[3:]}
    assert rows == {
        "audio features": ["0.0213", "11737"],
        "phone decoding": ["0", "-"],
        "render": ["3.7", "67.57"],
        "total": ["4", "62.5"],
    }


def test_the_evaluation_tables_keep_their_headers_apart():
    from avatar.eval.evaluate import format_result
    from avatar.eval.scorer import REGIONS

    scores = {f"{metric}_{r}": 0.5 for r in REGIONS for metric in ("psnr", "ssim", "lpips")}
    result = {
        "methods": {"avatar": {"psnr": 27.123456, "lmd": 2.2, **scores}, "static_head": {"psnr": 25.0, **scores}},
        "margins": {"static_head": {"lmd": 1.0326108932495117, "mouth_corr": 0.3}},
    }
    text = format_result(result)
    main, regions, margins = text.split("\n\n")
    assert _columns(main.splitlines()[1])[:4] == ["method", "psnr", "ssim", "lpips"]
    assert "27.12" in main and "27.123456" not in main
    assert _columns(regions.splitlines()[1]) == ["method", "region", "psnr", "ssim", "lpips"]
    assert len(regions.splitlines()) == 3 + 2 * len(REGIONS)
    assert _columns(margins.splitlines()[-1]) == ["static_head", "1.033", "0.3"]
