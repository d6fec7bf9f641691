"""The report's tables: the thesis' numbers file, where each result goes, values and differences."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest
from report_helpers import write_retrieval, write_vqa

from dialogclip.core.config import ConfigError
from dialogclip.report.settings import report_settings_from_params
from dialogclip.report.tables import build_tables, collect_results, table_grid, write_table
from dialogclip.report.thesis import RETRIEVAL_METRICS, load_thesis_numbers

REPO = Path(__file__).resolve().parents[2]
NUMBERS = REPO / "resources" / "thesis" / "numbers.yaml"

# METHOD.md section 7 as the thesis prints it (an independent transcription the data file must
# match): row id -> img R@1 R@5 R@10 txt R@1 R@5 R@10.
METHOD_COCO = {
    "clip-vitb32-laion2b": "39.7 65.4 75.6 56.3 79.8 87.1",
    "c3m-vitb32-laion2b-blip2-beta0.9": "40.2 65.9 75.9 57.0 80.6 87.5",
    "clip-vitl14-laion2b": "46.5 71.1 79.8 63.3 84.0 90.8",
    "c3m-vitl14-laion2b-blip2-beta0.9": "46.8 71.2 80.0 63.6 84.1 91.0",
    "clip-vith14-laion2b": "49.4 73.4 81.5 66.0 86.1 91.9",
    "c3m-vith14-laion2b-blip2-beta0.9": "49.1 73.3 81.5 66.0 86.2 91.9",
    "c3m-vith14-laion2b-llava-beta0.9": "49.6 73.5 81.7 66.6 86.5 92.1",
    "c3m-vith14-laion2b-blip2-only3rd": "19.9 41.3 52.3 31.0 57.0 68.9",
    "c3m-vith14-laion2b-llava-only3rd": "30.4 55.5 66.5 46.0 71.7 80.3",
    "clip-vitb32-laion400m": "34.2 60.0 70.6 52.4 76.3 84.3",
    "c3m-vitb32-laion400m-llava-beta0.9": "34.9 60.7 71.2 52.9 77.1 84.7",
    "c3m-vitb32-laion400m-llava-only3rd": "27.5 51.3 62.4 39.8 66.9 76.5",
    "draft-vitb32-laion400m-blend": "34.8 60.4 71.0 53.1 76.6 84.8",
    "draft-vitb32-laion400m": "25.4 49.0 60.6 36.7 64.3 75.5",
    # the blend ablation
    "c3m-vitb32-laion2b-blip2-beta1": "39.7 65.4 75.6 56.3 79.8 87.1",
    "c3m-vitb32-laion2b-blip2-beta0.95": "39.9 65.7 75.8 57.1 80.4 87.3",
    "c3m-vitb32-laion2b-blip2-beta0.8": "40.0 65.6 75.8 56.3 79.6 86.2",
    "c3m-vitb32-laion2b-blip2-beta0.6": "38.7 63.8 73.8 53.7 75.6 84.8",
}
METHOD_VQA = {  # row id -> (dataset, overall %)
    "clip-vitb32-laion400m": {"vqa_abstract": 9.88, "vqa_real": 26.2},
    "draft-vitb32-laion400m-6ep": {"vqa_abstract": 10.68},
    "draft-vitb32-laion400m-2ep": {"vqa_real": 23.6},
    "draft-vitb32-laion400m-blend-12ep": {"vqa_abstract": 11.54},
    "draft-vitb32-laion400m-blend-3ep": {"vqa_real": 28.3},
    "draft-nommd-vitb32-laion400m-6ep": {"vqa_abstract": 9.46},
    "draft-nommd-vitb32-laion400m-blend-12ep": {"vqa_abstract": 10.24},
}


def test_numbers_file_holds_every_number_of_method_section_7() -> None:
    thesis = load_thesis_numbers(NUMBERS)
    for rid, text in METHOD_COCO.items():
        expected = [float(value) for value in text.split()]
        assert [thesis.rows[rid].get("coco", m) for m in RETRIEVAL_METRICS] == expected, rid
    for rid, values in METHOD_VQA.items():
        for dataset, overall in values.items():
            assert thesis.rows[rid].get(dataset, "overall") == overall, (rid, dataset)
    assert thesis.rows["c3m-vitb32-laion2b-blip2-beta0.8"].fields["beta"] == 0.8
    assert thesis.rows["draft-vitb32-laion400m-blend-12ep"].fields["epochs"] == 12
    assert thesis.rows["draft-nommd-vitb32-laion400m-6ep"].fields["mmd"] is False
    assert list(thesis.tables) == ["retrieval", "beta_ablation", "only_third", "vqa", "no_mmd"]
    assert thesis.tables["no_mmd"].rows[-1] == "draft-nommd-vitb32-laion400m-blend-12ep"


def _settings(*models: dict, decimals: int = 2, **report: Any):
    base = {"architecture": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}
    return report_settings_from_params(
        {"models": [{**base, **m} for m in models], "generators": [], "decimals": decimals,
         **report}
    )  # fmt: skip


@pytest.fixture
def scenario(tmp_path: Path):
    """Five entries: two on one thesis row, a linked blend without results, an unlinked blend
    and an unlinked third tower alone (beta 0); retrieval and VQA files for some."""
    results = tmp_path / "results"
    settings = _settings(
        {"name": "b32", "thesis_row": "clip-vitb32-laion2b"},
        {"name": "b32-gelu", "thesis_row": "clip-vitb32-laion2b", "quickgelu": False},
        {"name": "c3m-missing", "thesis_row": "c3m-vitb32-laion2b-blip2-beta0.9",
         "text_variant": "embedding_blend", "other": "g.safetensors", "beta": 0.9},
        {"name": "blend-0.8", "text_variant": "embedding_blend", "other": "g.safetensors",
         "beta": 0.8},
        {"name": "only-g", "text_variant": "embedding_blend", "other": "g.safetensors",
         "beta": 0.0},
        {"name": "vqa-only", "pretrained": "laion400m_e32", "thesis_row": "clip-vitb32-laion400m"},
    )  # fmt: skip
    write_retrieval(results, "b32", [0.40, 0.66, 0.76, 0.57, 0.80, 0.875])
    write_retrieval(results, "b32-gelu", [0.39, 0.65, 0.75, 0.56, 0.79, 0.87])
    write_retrieval(results, "blend-0.8", [0.41, 0.67, 0.77, 0.58, 0.81, 0.88])
    write_retrieval(results, "only-g", [0.20, 0.41, 0.52, 0.31, 0.57, 0.69])
    write_vqa(results, "vqa-only", "vqa_abstract", 10.5,
              {"yes/no": 20.0, "number": 5.0, "other": 8.25})  # fmt: skip
    thesis = load_thesis_numbers(NUMBERS)
    tables = build_tables(thesis, settings, collect_results(settings, results))
    return tables, tmp_path


def _entries(table) -> list:
    return [(line.label, line.entry.name if line.entry else None) for line in table.lines]


def test_lines_follow_thesis_rows_then_matching_entries(scenario) -> None:
    tables, _ = scenario
    retrieval = tables["retrieval"]
    entries = _entries(retrieval)
    # both entries on the first row, in config order; the row without an entry once
    assert entries[:3] == [
        ("CLIP ViT-B-32 (LAION-2B)", "b32"),
        ("CLIP ViT-B-32 (LAION-2B)", "b32-gelu"),
        ("C3M ViT-B-32 (LAION-2B, BLIP-2), beta 0.9", "c3m-missing"),
    ]
    assert entries[3] == ("CLIP ViT-L-14 (LAION-2B)", None)
    # unlinked entries with a COCO result come last (vqa-only has none: it is on its row)
    assert entries[-2:] == [
        ("ViT-B-32 (laion2b_s34b_b79k), embedding_blend beta 0.8", "blend-0.8"),
        ("ViT-B-32 (laion2b_s34b_b79k), embedding_blend beta 0", "only-g"),
    ]
    assert len(retrieval.lines) == 11 + 1 + 2  # thesis rows + second entry on a row + unlinked
    # include filters: blends join the beta ablation, only beta 0 joins only-3rd
    assert _entries(tables["beta_ablation"])[-2:] == [
        ("ViT-B-32 (laion2b_s34b_b79k), embedding_blend beta 0.8", "blend-0.8"),
        ("ViT-B-32 (laion2b_s34b_b79k), embedding_blend beta 0", "only-g"),
    ]
    assert _entries(tables["only_third"])[-1] == (
        "ViT-B-32 (laion2b_s34b_b79k), embedding_blend beta 0",
        "only-g",
    )
    assert len(tables["only_third"].lines) == 4 + 1
    # no include: the MMD ablation holds exactly its thesis rows (and linked entries)
    assert [e for _, e in _entries(tables["no_mmd"])] == [
        "vqa-only",
        None,
        None,
        None,
        None,
    ]


def test_values_are_percent_and_differences_are_ours_minus_thesis(scenario) -> None:
    tables, _ = scenario
    line = tables["retrieval"].lines[0]
    columns = {column.metric: column for column in tables["retrieval"].columns}
    r1 = columns["image_retrieval_recall@1"]
    assert line.ours[r1] == pytest.approx(40.0)
    assert line.thesis[r1] == 39.7
    assert line.diff(r1) == pytest.approx(0.3)
    assert tables["retrieval"].lines[1].diff(columns["text_retrieval_recall@10"]) == pytest.approx(
        87.0 - 87.1
    )
    missing = tables["retrieval"].lines[2]  # linked, no result file
    assert missing.ours[r1] is None and missing.thesis[r1] == 40.2 and missing.diff(r1) is None
    vqa = tables["vqa"].lines[0]
    by_header = {column.header: column for column in tables["vqa"].columns}
    assert vqa.ours[by_header["abstract overall"]] == 10.5
    assert vqa.ours[by_header["abstract number"]] == 5.0
    assert vqa.thesis[by_header["abstract number"]] is None  # the thesis gives overall only
    assert vqa.diff(by_header["abstract overall"]) == pytest.approx(10.5 - 9.88)
    assert vqa.ours[by_header["real overall"]] is None


def test_markdown_csv_and_html_show_ours_thesis_and_difference(scenario) -> None:
    tables, tmp_path = scenario
    write_table(tables["retrieval"], tmp_path / "retrieval")
    markdown = (tmp_path / "retrieval.md").read_text().splitlines()
    header = "| model | entry |  | img R@1 | img R@5 | img R@10 | txt R@1 | txt R@5 | txt R@10 |"
    assert markdown[4] == header
    assert markdown[6:9] == [
        "| CLIP ViT-B-32 (LAION-2B) | b32 | ours | 40.00 | 66.00 | 76.00 | 57.00 | 80.00 | 87.50 |",
        "|  |  | thesis | 39.7 | 65.4 | 75.6 | 56.3 | 79.8 | 87.1 |",
        "|  |  | Δ | +0.30 | +0.60 | +0.40 | +0.70 | +0.20 | +0.40 |",
    ]
    # a row without a result: "-" for ours and the difference
    assert markdown[12:15] == [
        "| C3M ViT-B-32 (LAION-2B, BLIP-2), beta 0.9 | c3m-missing | ours "
        "| - | - | - | - | - | - |",
        "|  |  | thesis | 40.2 | 65.9 | 75.9 | 57.0 | 80.6 | 87.5 |",
        "|  |  | Δ | - | - | - | - | - | - |",
    ]
    records = list(csv.DictReader(io.StringIO((tmp_path / "retrieval.csv").read_text())))
    assert records[0]["model"] == records[2]["model"] == "CLIP ViT-B-32 (LAION-2B)"
    assert [records[i][""] for i in range(3)] == ["ours", "thesis", "Δ"]
    assert records[8]["img R@1"] == ""  # missing: empty in CSV
    assert records[5]["txt R@10"] == "-0.10"
    html = (tmp_path / "retrieval.html").read_text()
    assert '<td rowspan="3" class="label">CLIP ViT-B-32 (LAION-2B)</td>' in html
    assert "<td>40.00</td>" in html and "<td>+0.30</td>" in html


def test_beta_ablation_shows_each_sides_beta(scenario) -> None:
    tables, tmp_path = scenario
    write_table(tables["beta_ablation"], tmp_path / "beta")
    lines = (tmp_path / "beta.md").read_text().splitlines()
    assert lines[4].startswith("| model | entry |  | beta | img R@1 |")
    assert lines[6].startswith(
        "| C3M ViT-B-32 (LAION-2B, BLIP-2), beta 1 (baseline) | - | ours | - |"
    )
    assert lines[7].startswith("|  |  | thesis | 1 | 39.7 |")
    blend = next(line for line in lines if "| blend-0.8 |" in line)
    assert blend.startswith(
        "| ViT-B-32 (laion2b_s34b_b79k), embedding_blend beta 0.8 | blend-0.8 | ours | 0.8 "
        "| 41.00 |"
    )


def test_decimals_setting(tmp_path: Path) -> None:
    results = tmp_path / "results"
    write_retrieval(results, "b32", [0.40123, 0.66, 0.76, 0.57, 0.80, 0.875])
    settings = _settings({"name": "b32", "thesis_row": "clip-vitb32-laion2b"}, decimals=1)
    tables = build_tables(
        load_thesis_numbers(NUMBERS), settings, collect_results(settings, results)
    )
    cells = tables["retrieval"].grid()
    assert cells[0][3:5] == ["40.1", "66.0"] and cells[2][3] == "+0.4"


def test_unknown_thesis_row_names_the_entry(tmp_path: Path) -> None:
    settings = _settings({"name": "typo", "thesis_row": "clip-vitb32-laion2"})
    with pytest.raises(ConfigError, match=r"typo has thesis_row 'clip-vitb32-laion2'.*numbers"):
        build_tables(load_thesis_numbers(NUMBERS), settings, {})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rows: {}\n", "expected exactly the keys 'rows' and 'tables'"),
        (
            "rows: {a: {label: A, coco: {image_retrieval_recall@2: 3}}}\ntables: {}\n",
            r"rows\.a\.coco: unknown metric\(s\) \['image_retrieval_recall@2'\]",
        ),
        (
            "rows: {a: {label: A, vqa_real: {overall: 130}}}\ntables: {}\n",
            r"rows\.a\.vqa_real\.overall: not a percentage: 130",
        ),
        (
            "rows: {a: {label: A}}\ntables: {t: {datasets: [coco], rows: [b]}}\n",
            r"tables\.t\.rows: no such row\(s\) \['b'\]",
        ),
        (
            "rows: {a: {label: A}}\ntables: {t: {datasets: [coco], include: [{epochs: 2}]}}\n",
            r"tables\.t\.include: unknown key\(s\) \['epochs'\]",
        ),
    ],
)
def test_malformed_numbers_file_names_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "numbers.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"{path}: .*{message}"):
        load_thesis_numbers(path)


def test_unreadable_result_file_names_it(tmp_path: Path) -> None:
    bad = tmp_path / "results" / "eval" / "retrieval" / "b32" / "coco.json"
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")
    settings = _settings({"name": "b32"})
    with pytest.raises(ValueError, match=rf"{bad}: not a valid metrics JSON"):
        collect_results(settings, tmp_path / "results")


def test_an_entry_with_several_thesis_rows_lands_on_each(tmp_path: Path) -> None:
    """DRAFT's model is printed under one row in the retrieval table and another in the VQA
    table: a list of rows puts the entry (with that row's numbers) in both."""
    results = tmp_path / "results"
    settings = _settings(
        {"name": "draft-12ep-beta0.9", "pretrained": "laion400m_e32",
         "text_variant": "embedding_blend", "other": "t.safetensors", "beta": 0.9,
         "thesis_row": ["draft-vitb32-laion400m-blend-12ep", "draft-vitb32-laion400m-blend"]},
    )  # fmt: skip
    write_retrieval(results, "draft-12ep-beta0.9", [0.35, 0.60, 0.71, 0.53, 0.77, 0.85])
    write_vqa(results, "draft-12ep-beta0.9", "vqa_abstract", 11.0,
              {"yes/no": 20.0, "number": 5.0, "other": 8.0})  # fmt: skip
    thesis = load_thesis_numbers(NUMBERS)
    tables = build_tables(thesis, settings, collect_results(settings, results))
    for table, row in (
        ("retrieval", "draft-vitb32-laion400m-blend"),
        ("vqa", "draft-vitb32-laion400m-blend-12ep"),
        ("no_mmd", "draft-vitb32-laion400m-blend-12ep"),
    ):
        placed = [line for line in tables[table].lines if line.entry is not None]
        assert [(line.row.id, line.entry.name) for line in placed] == [
            (row, "draft-12ep-beta0.9")
        ], table
    retrieval = next(line for line in tables["retrieval"].lines if line.entry is not None)
    assert retrieval.thesis[retrieval_column(tables["retrieval"])] == 34.8
    unknown = _settings({"name": "x", "thesis_row": ["clip-vitb32-laion2b", "no-such-row"]})
    with pytest.raises(ConfigError, match="x has thesis_row 'no-such-row'"):
        build_tables(thesis, unknown, {})


def retrieval_column(table):
    """The text -> image R@1 column of a retrieval table."""
    return next(c for c in table.columns if c.metric == "image_retrieval_recall@1")


def test_without_the_thesis_a_table_holds_our_entries_alone(tmp_path: Path) -> None:
    results = tmp_path / "results"
    blend = {"text_variant": "embedding_blend", "other": "g.safetensors"}
    settings = _settings(
        {"name": "base"},
        {"name": "blend-0.9", **blend, "beta": 0.9},
        {"name": "only-g", **blend, "beta": 0.0},
        compare_with_thesis=False,
    )
    write_retrieval(results, "base", [0.40, 0.66, 0.76, 0.57, 0.80, 0.875])
    write_retrieval(results, "blend-0.9", [0.41, 0.67, 0.77, 0.58, 0.81, 0.88])
    write_retrieval(results, "only-g", [0.20, 0.41, 0.52, 0.31, 0.57, 0.69])
    tables = build_tables(
        load_thesis_numbers(NUMBERS), settings, collect_results(settings, results)
    )
    retrieval = tables["retrieval"]
    # every line is an entry (no thesis row), with our numbers and nothing of the thesis'
    assert [line.entry.name for line in retrieval.lines] == ["base", "blend-0.9", "only-g"]
    assert all(line.row is None and not any(line.thesis.values()) for line in retrieval.lines)
    assert [line.entry.name for line in tables["beta_ablation"].lines] == ["blend-0.9", "only-g"]
    markdown = table_grid(retrieval).markdown()
    assert "| ViT-B-32 (laion2b_s34b_b79k) | base | ours | 40.00 | 66.00 |" in markdown
    assert "thesis" not in markdown.split("\n", 3)[3] and "Δ" not in markdown
    assert "not set beside the thesis' numbers" in markdown
    assert len(retrieval.grid()) == 3  # one row per line


def test_a_thesis_row_without_comparison_is_refused_naming_the_entry() -> None:
    settings = _settings(
        {"name": "linked", "thesis_row": "clip-vitb32-laion2b"}, compare_with_thesis=False
    )
    with pytest.raises(ConfigError, match=r"linked has thesis_row 'clip-vitb32-laion2b', but "
                       r"report.compare_with_thesis is false"):  # fmt: skip
        build_tables(load_thesis_numbers(NUMBERS), settings, {})
