"""`snakemake --report report.html` on the finished demo, opened in a real headless browser.

Debian's chromium (`make test` installs it: scripts/system_deps.sh) driven by playwright (never
`playwright install`): every table of the report renders in the page with our numbers in its
cells, every plot decodes (naturalWidth > 0), and every link of the page is a data: URI that
loads to the file's bytes (nothing points at a file beside the report). The demo's report as a
user who compares with the thesis builds it: `tiny` linked to the thesis' CLIP ViT-B-32
(LAION-400M) row (the demo itself compares with none), the training runs' variants beside it.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
import yaml
from PIL import Image
from workflow_helpers import copy_demo, snakemake

from dialogclip.core.io import read_json

pytestmark = [pytest.mark.dag, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
# Flags that work in this sandbox: no GPU, no network side traffic, no first-run UI.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TABLES = ["retrieval", "beta_ablation", "only_third", "vqa", "no_mmd", "dialogue_quality"]
PLOTS = [
    "recall_bars",
    "beta_curve",
    "vqa_answer_types",
    "download_errors",
    "parse_rates",
    "training_loss",
    "dialogue_clipscore",
    "dialogue_tokens",
]
THESIS_ROW = "clip-vitb32-laion400m"  # CLIP ViT-B-32 (LAION-400M), linked to `tiny`
# The first DRAFT run's weight blend at beta 0.9 (an evaluation variant of its run): an entry
# without a thesis row.
WEIGHT_BLEND = "tiny-draft-llava-wblend-beta0.9"


@pytest.fixture(scope="module")
def report(finished_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the demo folder, its report.html) built by `snakemake --report` on a copy of the
    finished demo whose `tiny` is linked to the thesis (its report job redone)."""
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} missing: run `make test-deps` (Debian's chromium)")
    workdir = copy_demo(tmp_path_factory.mktemp("report") / "demo", source=finished_demo)
    path = workdir / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config["report"]["compare_with_thesis"] = True
    (tiny,) = (entry for entry in config["evaluate"]["models"] if entry["name"] == "tiny")
    tiny["thesis_row"] = THESIS_ROW
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = snakemake(workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    html = workdir / "report.html"
    result = snakemake(workdir, "--report", str(html))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return workdir, html


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    """A page of headless chromium with a fresh profile; records failed and outside requests
    and page errors."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1400, "height": 900},
        )
        page = context.new_page()
        # Playwright's 30 s default was once too short for an iframe's table on the 2-core CI
        # machine under the suite's load (the same test passes in 31 s alone): a wait, not a
        # check, so a longer one only delays a real failure.
        page.set_default_timeout(120_000)
        problems: list[str] = []
        page.on("requestfailed", lambda request: problems.append(f"failed: {request.url[:120]}"))
        page.on(
            "request",
            lambda request: (
                None
                if request.url.startswith(("data:", "file://"))
                else problems.append(f"outside request: {request.url[:120]}")
            ),
        )
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        yield page, problems
        context.close()


DECODED_JS = """async (img) => {
    await img.decode();
    const canvas = document.createElement('canvas');
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    const context = canvas.getContext('2d');
    context.drawImage(img, 0, 0);
    const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
    let opaque = 0;
    for (let i = 3; i < pixels.length; i += 4) if (pixels[i] === 255) opaque++;
    return [img.naturalWidth, img.naturalHeight, opaque / (canvas.width * canvas.height)];
}"""


def _open(page, html: Path, category: str) -> None:
    page.goto(html.as_uri())
    page.get_by_role("link", name=category, exact=True).click()


def _view(page, name: str) -> None:
    """Click the view (eye) button of the result ``name`` in the open category."""
    row = page.locator(f"tr:has(td:text-is('{name}'))")
    assert row.count() == 1, f"{name}: {row.count()} rows in the result list"
    row.locator("a[iconname=eye]").click()


def _cells(frame, label: str) -> list[list[str]]:
    """The three rows (ours, thesis, Δ) of the line whose entry cell is ``label``, as texts."""
    return frame.evaluate(
        """(body, label) => {
            const texts = Array.from(document.querySelectorAll('tbody tr'))
                .map(r => Array.from(r.cells).map(c => c.textContent));
            const start = texts.findIndex(cells => cells.includes(label));
            return start < 0 ? [] : texts.slice(start, start + 3);
        }""",
        label,
    )


def test_report_lists_every_table_and_plot(report, browser) -> None:
    _, html = report
    page, problems = browser
    page.goto(html.as_uri())
    listed = page.evaluate(
        "Object.fromEntries(Object.entries(categories).map(([c, sub]) =>"
        " [c, Object.values(sub).flat().map(p => results[p].name).sort()]))"
    )
    assert listed == {
        "Tables": sorted(f"{name}.html" for name in TABLES),
        "Plots": sorted(f"{name}.png" for name in PLOTS),
        "Gallery": ["gallery.html"],
    }
    assert problems == []


def test_tables_render_with_our_numbers(report, browser) -> None:
    workdir, html = report
    page, problems = browser
    retrieval = read_json(workdir / "results" / "eval" / "retrieval" / "tiny" / "coco.json")
    ours = [
        f"{100 * retrieval['metrics'][f'{kind}_retrieval_recall@{k}']:.2f}"
        for kind in ("image", "text")
        for k in (1, 5, 10)
    ]
    _open(page, html, "Tables")
    _view(page, "retrieval")
    frame = page.frame_locator("iframe").locator("body")
    frame.locator("table").wait_for()
    # `tiny` on the thesis' CLIP ViT-B-32 (LAION-400M) row
    tiny = _cells(frame, "tiny")
    assert tiny[0][:3] == ["CLIP ViT-B-32 (LAION-400M)", "tiny", "ours"] and tiny[0][3:] == ours
    assert tiny[1] == ["thesis", "34.2", "60.0", "70.6", "52.4", "76.3", "84.3"]
    thesis = [34.2, 60.0, 70.6, 52.4, 76.3, 84.3]
    assert tiny[2] == ["Δ", *(f"{float(o) - t:+.2f}" for o, t in zip(ours, thesis, strict=True))]
    # an entry without a thesis row: its own line, thesis and Δ missing
    weight_blend = _cells(frame, WEIGHT_BLEND)
    assert weight_blend[1][1:] == ["-"] * 6 and weight_blend[0][3] not in ("", "-")

    vqa = read_json(workdir / "results" / "eval" / "vqa" / "tiny" / "vqa_abstract.json")
    _open(page, html, "Tables")
    _view(page, "vqa")
    frame = page.frame_locator("iframe").locator("body")
    frame.locator("table").wait_for()
    tiny = _cells(frame, "tiny")
    # columns: epochs, abstract yes/no, number, other, overall, real ...
    assert tiny[0][7] == f"{vqa['metrics']['overall']:.2f}" and tiny[1][5] == "9.88"

    _open(page, html, "Tables")
    _view(page, "dialogue_quality")
    frame = page.frame_locator("iframe").locator("body")
    frame.locator("table").wait_for()
    for generator in ("blip2", "llava"):
        quality = read_json(
            workdir / "results" / "report" / "dialogue_quality" / f"{generator}.json"
        )
        row = frame.evaluate(
            "(body, g) => Array.from(document.querySelectorAll('tbody tr'))"
            ".map(r => Array.from(r.cells).map(c => c.textContent)).find(r => r[0] === g)",
            generator,
        )
        assert row[1] == str(quality["rows"]["generated"])
        assert row[2] == f"{100 * quality['parse_rate']:.1f}"
        assert row[5] == f"{quality['clipscore']['dialogue']['mean']:.3f}"

    for name in ("beta_ablation", "only_third", "no_mmd"):
        _open(page, html, "Tables")
        _view(page, name)
        frame = page.frame_locator("iframe").locator("body")
        frame.locator("table").wait_for()
        assert frame.locator("tbody tr").count() >= 3
    assert problems == []


def test_every_plot_decodes(report, browser) -> None:
    workdir, html = report
    page, problems = browser
    for name in PLOTS:
        _open(page, html, "Plots")
        _view(page, name)
        image = page.locator("img[src^='data:image/png']")
        image.wait_for()
        # decoded: the size is known and every pixel was painted (matplotlib's figures are
        # opaque; an image the browser cannot decode draws nothing onto the canvas)
        width, height, opaque = image.evaluate(DECODED_JS)
        with Image.open(workdir / "results" / "report" / "plots" / f"{name}.png") as png:
            assert (width, height) == png.size and width > 0, name
        assert opaque == 1.0, f"{name}: {opaque:.0%} of the pixels drawn"
    assert problems == []


def test_no_broken_links(report, browser) -> None:
    """Every link, image and frame source of the page is in-page ('#') or a data: URI, and every
    embedded result loads to exactly the bytes of its file."""
    workdir, html = report
    page, problems = browser
    page.goto(html.as_uri())
    sources = page.evaluate(
        "Array.from(document.querySelectorAll('a[href], img[src], iframe[src], script[src],"
        " link[href]')).map(e => e.getAttribute('href') || e.getAttribute('src'))"
    )
    assert sources and all(s == "#" or s.startswith("data:") for s in sources), sources
    embedded = page.evaluate(
        """async () => {
            const out = {};
            for (const r of Object.values(results)) {
                const response = await fetch(r.data_uri);
                const bytes = new Uint8Array(await response.arrayBuffer());
                let text = '';
                for (const b of bytes) text += String.fromCharCode(b);
                out[r.name] = [response.ok, btoa(text)];
            }
            return out;
        }"""
    )
    files = {
        **{f"{t}.html": workdir / "results" / "report" / "tables" / f"{t}.html" for t in TABLES},
        **{f"{p}.png": workdir / "results" / "report" / "plots" / f"{p}.png" for p in PLOTS},
        "gallery.html": workdir / "results" / "report" / "gallery.html",
    }
    assert sorted(embedded) == sorted(files)
    for name, (ok, data) in embedded.items():
        assert ok and base64.b64decode(data) == files[name].read_bytes(), name
    assert problems == []
    # the report is one self-contained file: it still opens with the demo folder gone
    alone = workdir.parent / "alone" / "report.html"
    alone.parent.mkdir()
    shutil.copy(html, alone)
    page.goto(alone.as_uri())
    assert json.loads(page.evaluate("JSON.stringify(Object.keys(categories).sort())")) == [
        "Gallery",
        "Plots",
        "Tables",
    ]


def test_the_gallery_shows_its_images_and_dialogue(report, browser) -> None:
    _, html = report
    page, problems = browser
    _open(page, html, "Gallery")
    _view(page, "gallery")
    frame = page.frame_locator("iframe")
    images = frame.locator("div.sample img")
    images.first.wait_for()
    assert images.count() == 12  # report.gallery.samples
    for k in range(images.count()):
        width, height, _ = images.nth(k).evaluate(DECODED_JS)
        assert width > 0 and height > 0, k  # each inline JPEG decodes
    first = frame.locator("div.sample").first.inner_text()
    assert "Caption: " in first and "What do you see in this image?" in first
    assert problems == []
