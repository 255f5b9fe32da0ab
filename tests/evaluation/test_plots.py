"""Figures: the overlay's error map, tri-planar layout and legend, the channels figure, learning curves read
from a real MLflow store, PNG output, and that the module leaves the user's matplotlib backend and rcParams alone."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.image import imread
from matplotlib.legend import Legend
from matplotlib.transforms import Bbox
from mlflow.tracking import MlflowClient
from scipy.ndimage import center_of_mass

from brainbench.errors import BrainbenchError
from brainbench.evaluation.plots import (
    ERROR_STYLE,
    ErrorCategory,
    case_metric_figure,
    case_metric_png,
    channels_figure,
    error_map,
    learning_curves_figure,
    overlay_figure,
    overlay_png,
    rank_stability_figure,
    save_figure,
)

BRATS_LABELS = {0: "background", 1: "necrosis", 2: "oedema", 4: "enhancing tumour"}


def error_by_rule(reference: int, prediction: int) -> ErrorCategory:
    """The error map's definition, voxel by voxel."""
    if reference == 0 and prediction == 0:
        return ErrorCategory.BACKGROUND
    if reference == 0:
        return ErrorCategory.FALSE_POSITIVE
    if prediction == 0:
        return ErrorCategory.FALSE_NEGATIVE
    return ErrorCategory.AGREEMENT if reference == prediction else ErrorCategory.WRONG_LABEL


def brats_case(shape: tuple[int, int, int] = (20, 24, 16)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A bright ellipsoid 'brain' with a three-label tumour; the prediction misses, adds and mislabels parts."""
    grid = np.stack(np.meshgrid(*(np.arange(s) for s in shape), indexing="ij"), axis=-1).astype(float)
    image = np.where((((grid - np.array(shape) / 2) / (np.array(shape) / 2.5)) ** 2).sum(-1) < 1, 100.0, 0.0)
    reference = np.zeros(shape, np.int16)
    reference[6:12, 8:16, 5:11] = 2
    reference[7:11, 9:14, 6:10] = 4
    reference[8:10, 10:12, 7:9] = 1
    prediction = np.roll(reference, 1, axis=0)
    prediction[prediction == 1] = 4
    return image, reference, prediction


def legend_texts(figure: Figure) -> dict[str, list[str]]:
    """Each figure legend's entries, by legend title."""
    return {legend.get_title().get_text(): [t.get_text() for t in legend.get_texts()] for legend in figure.legends}


def labels_legend(figure: Figure) -> Legend:
    """The figure legend titled "labels" (the overlay also has an error-map legend)."""
    return next(legend for legend in figure.legends if legend.get_title().get_text() == "labels")


def test_error_map_against_hand_worked_counts():
    reference, prediction = np.zeros((3, 3, 3), np.int16), np.zeros((3, 3, 3), np.uint8)
    reference[0, 0, :] = [1, 2, 4]
    prediction[0, 0, :] = [1, 4, 0]  # agreement, wrong label, false negative
    reference[1, 1, 1] = prediction[1, 1, 1] = 2  # agreement
    prediction[2, 2, 2], prediction[2, 2, 1] = 1, 4  # two false positives
    counts = np.bincount(error_map(reference, prediction).ravel(), minlength=len(ErrorCategory))
    assert dict(zip(ErrorCategory, counts.tolist())) == {
        ErrorCategory.BACKGROUND: 21, ErrorCategory.AGREEMENT: 2, ErrorCategory.FALSE_POSITIVE: 2,
        ErrorCategory.FALSE_NEGATIVE: 1, ErrorCategory.WRONG_LABEL: 1}


def test_error_map_matches_the_voxel_rule_on_random_label_maps():
    rng = np.random.default_rng(3)
    reference, prediction = rng.choice([0, 1, 2, 4], (6, 5, 4)), rng.choice([0, 1, 2, 4], (6, 5, 4))
    expected = np.vectorize(error_by_rule)(reference, prediction)
    np.testing.assert_array_equal(error_map(reference, prediction), expected)
    with pytest.raises(BrainbenchError, match="differs"):
        error_map(reference, prediction[:-1])


def test_overlay_is_tri_planar_through_the_reference_centre_with_label_legend():
    image, reference, prediction = brats_case()
    figure = overlay_figure(image, reference, prediction, BRATS_LABELS, title="case 7")
    centre = [int(round(c)) for c in center_of_mass(reference != 0)]
    axes = np.array(figure.axes).reshape(3, 3)
    assert axes.size == 9
    for axis, plane in enumerate(("sagittal", "coronal", "axial")):
        titles = [ax.get_title() for ax in axes[axis]]
        assert titles == [f"{column}: {plane} slice {centre[axis]}" for column in ("reference", "prediction",
                                                                                    "error map")]
        cut = lambda volume: np.rot90(np.take(volume, centre[axis], axis=axis))  # noqa: E731
        for ax, volume in zip(axes[axis][:2], (reference, prediction)):
            shown = ax.get_images()[1].get_array()  # label index per pixel, background masked
            np.testing.assert_array_equal(np.array([1, 2, 4])[shown.filled(0)][~shown.mask], cut(volume)[~shown.mask])
            np.testing.assert_array_equal(shown.mask, cut(volume) == 0)
        shown = axes[axis][2].get_images()[1].get_array()
        np.testing.assert_array_equal(shown.filled(0), cut(np.vectorize(error_by_rule)(reference, prediction)))
    legends = legend_texts(figure)
    assert legends["labels"] == ["1 necrosis", "2 oedema", "4 enhancing tumour"]
    errors = np.vectorize(error_by_rule)(reference, prediction)
    assert legends["error map (whole volume)"] == [
        f"{name} ({int((errors == category).sum())} voxels)" for category, name in
        ((ErrorCategory.AGREEMENT, "agreement"), (ErrorCategory.FALSE_POSITIVE, "false positive"),
         (ErrorCategory.FALSE_NEGATIVE, "false negative"), (ErrorCategory.WRONG_LABEL, "wrong label"))]
    assert figure.get_suptitle() == "case 7"


def test_overlay_of_an_empty_reference_centres_on_the_image_and_names_unknown_labels():
    image, _, prediction = brats_case()
    prediction[prediction == 2] = 3
    figure = overlay_figure(image, np.zeros_like(prediction), prediction, {1: "necrosis"})
    centre = [int(round(c)) for c in center_of_mass(image != 0)]
    assert [ax.get_title() for ax in figure.axes[::3]] == [
        f"reference: {plane} slice {c}" for plane, c in zip(("sagittal", "coronal", "axial"), centre)]
    labels = labels_legend(figure)
    assert [t.get_text() for t in labels.get_texts()] == ["1 necrosis", "3 label 3", "4 label 4"]
    thick = overlay_figure(image, prediction, prediction, {}, spacing=(1.0, 0.5, 3.0))
    assert [ax.get_aspect() for ax in thick.axes[::3]] == [6.0, 3.0, 0.5]  # slice thickness / in-plane, per view
    with pytest.raises(BrainbenchError, match="one \\(X, Y, Z\\) shape"):
        overlay_figure(image[:-1], prediction, prediction, {})
    with pytest.raises(BrainbenchError, match="non-integer"):
        overlay_figure(image, prediction + 0.5, prediction, {})


def test_overlay_legends_of_ten_long_labels_stay_apart_inside_the_figure_in_colours_unlike_the_errors():
    image, reference, prediction = brats_case()
    reference[reference == 4] = 10  # a label past the palette's first wrap-around in use
    labels = {value: f"structure number {value} with a deliberately long anatomical name" for value in range(1, 11)}
    figure = overlay_figure(image, reference, prediction, labels)
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    boxes = {legend.get_title().get_text(): legend.get_window_extent(renderer) for legend in figure.legends}
    assert set(boxes) == {"labels", "error map (whole volume)"}
    assert not boxes["labels"].overlaps(boxes["error map (whole volume)"])
    for box in boxes.values():
        assert Bbox.union([box, figure.bbox]).bounds == pytest.approx(figure.bbox.bounds)  # fully inside
        assert all(box.y1 < ax.get_window_extent(renderer).y0 for ax in figure.axes)  # below every panel
    legend = labels_legend(figure)
    assert [t.get_text().replace("\n", " ") for t in legend.get_texts()] == [f"{v} {n}" for v, n in labels.items()]
    label_colours = [to_rgb(patch.get_facecolor()) for patch in legend.get_patches()]
    error_colours = [to_rgb(colour) for _, colour in ERROR_STYLE.values()]
    assert len(set(label_colours)) == 10
    assert min(np.linalg.norm(np.subtract(a, b)) for a in label_colours for b in error_colours) > 0.35


def test_channels_figure_shows_the_axial_slice_through_the_label_centre_in_every_channel():
    image, reference, _ = brats_case()
    ramp = np.arange(image.size, dtype=float).reshape(image.shape)
    images = {"t1": image, "flair": image + ramp, "t2": 2 * image}
    figure = channels_figure(images, reference, BRATS_LABELS, title="case 3")
    z = int(round(center_of_mass(reference != 0)[2]))
    assert figure.get_suptitle() == f"case 3: axial slice {z}"
    assert [ax.get_title() for ax in figure.axes] == ["t1", "flair", "t2"]
    for ax, volume in zip(figure.axes, images.values()):
        grey, labels = ax.get_images()
        np.testing.assert_array_equal(grey.get_array(), np.rot90(volume[:, :, z]))
        shown = labels.get_array()  # label index per pixel, background masked
        expected = np.rot90(reference[:, :, z])
        np.testing.assert_array_equal(shown.mask, expected == 0)
        np.testing.assert_array_equal(np.array([1, 2, 4])[shown.filled(0)][~shown.mask], expected[~shown.mask])
    assert legend_texts(figure) == {"labels": ["1 necrosis", "2 oedema", "4 enhancing tumour"]}
    overlay_legend = labels_legend(overlay_figure(image, reference, reference, BRATS_LABELS))
    assert [to_rgb(p.get_facecolor()) for p in figure.legends[0].get_patches()] == \
        [to_rgb(p.get_facecolor()) for p in overlay_legend.get_patches()]  # the overlay's palette


def test_channels_figure_without_labelled_voxels_centres_on_the_channels_and_keeps_voxel_proportions():
    image, _, _ = brats_case()
    shifted = np.roll(image, 3, axis=2)
    z = int(round(center_of_mass((image != 0) | (shifted != 0))[2]))
    empty = channels_figure({"t1": image, "t2": shifted}, np.zeros(image.shape, np.uint8), {1: "lesion"})
    assert empty.get_suptitle() == f"axial slice {z}"
    assert legend_texts(empty) == {"labels": ["1 lesion"]}  # the legend names the edition's labels all the same
    bare = channels_figure({"t1": image}, None, {1: "lesion"}, spacing=(1.0, 0.5, 3.0))
    assert bare.get_suptitle() == f"axial slice {int(round(center_of_mass(image != 0)[2]))}"
    assert [len(ax.get_images()) for ax in bare.axes] == [1] and not bare.legends
    assert bare.axes[0].get_aspect() == 0.5  # rows run along Y (0.5 mm), columns along X (1 mm)


def test_channels_figure_of_scattered_labels_shows_the_labelled_slice_nearest_their_centre():
    image, _, _ = brats_case()
    label = np.zeros(image.shape, np.uint8)
    label[10, 12, 2] = 1
    label[9:11, 12, 12] = 1  # centre of mass at z = (2 + 2 * 12) / 3 ≈ 9, a slice without labels
    assert int(round(center_of_mass(label)[2])) == 9
    figure = channels_figure({"swi": image}, label, {1: "microbleed"})
    assert figure.get_suptitle() == "axial slice 12"
    assert (~figure.axes[0].get_images()[1].get_array().mask).sum() == 2


@pytest.mark.parametrize(("images", "label", "spacing", "message"), [
    ({}, None, None, "one or more channels"),
    ({"t1": np.zeros((4, 4))}, None, None, "one or more channels"),
    ({"t1": np.zeros((4, 4, 4)), "t2": np.zeros((4, 4, 5))}, None, None, "one or more channels"),
    ({"t1": np.zeros((4, 4, 4))}, np.zeros((4, 4, 5), np.uint8), None, "label shape"),
    ({"t1": np.zeros((4, 4, 4))}, np.full((4, 4, 4), 0.5), None, "label holds non-integer"),
    ({"t1": np.zeros((4, 4, 4))}, np.full((4, 4, 4), -1), None, "label holds negative"),
    ({"t1": np.zeros((4, 4, 4))}, None, (1.0, 0.0, 1.0), "three positive voxel sizes"),
])
def test_channels_figure_rejects_bad_input_in_one_line(images, label, spacing, message):
    with pytest.raises(BrainbenchError, match=message) as raised:
        channels_figure(images, label, {}, spacing=spacing)
    assert str(raised.value).startswith("channels figure") and "\n" not in str(raised.value)


def test_learning_curves_from_a_real_mlflow_store(tmp_path: Path):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("curves", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    logged = {"train_loss": [0.9, 0.6, 0.4], "train_dice": [0.8, 0.5, 0.3], "val_cross_entropy": [1.0, 0.7, 0.6],
              "val_dice": [0.85, 0.55, 0.35], "val_dice_segments": [0.2, 0.5, 0.7], "epoch": [0, 1, 2]}
    for key, values in logged.items():
        for step, value in enumerate(values):
            client.log_metric(run_id, key, value, step=step * 40)
    history = pd.DataFrame([{"key": m.key, "step": m.step, "value": m.value}
                            for key in logged for m in client.get_metric_history(run_id, key)])

    figure = learning_curves_figure(history, title="run 1")
    losses, scores = figure.axes
    assert (losses.get_title(), scores.get_title()) == ("loss", "Dice")
    drawn = {ax.get_title(): {line.get_label(): line for line in ax.get_lines()} for ax in figure.axes}
    assert sorted(drawn["loss"]) == ["train_dice", "train_loss", "val_cross_entropy", "val_dice"]
    assert list(drawn["Dice"]) == ["val_dice_segments"]
    for key, line in {**drawn["loss"], **drawn["Dice"]}.items():
        assert list(line.get_xdata()) == [0, 40, 80]
        assert list(line.get_ydata()) == pytest.approx(logged[key])
        assert line.get_linestyle() == ("-" if key.startswith("train_") else "--")
    assert drawn["loss"]["train_dice"].get_color() == drawn["loss"]["val_dice"].get_color()


def test_learning_curves_of_a_two_phase_run_keep_each_phase_apart():
    keys = ["phase1-train_loss", "phase2-train_loss", "phase2-train_dice", "phase2-val_dice",
            "phase2-val_dice_segments", "lr-Adam"]
    history = pd.DataFrame([(key, step, 1.0 / (step + 1)) for key in keys for step in range(3)],
                           columns=["key", "step", "value"])
    figure = learning_curves_figure(history)
    drawn = {ax.get_title(): {line.get_label(): line.get_color() for line in ax.get_lines()} for ax in figure.axes}
    assert sorted(drawn["loss"]) == ["phase1-train_loss", "phase2-train_dice", "phase2-train_loss", "phase2-val_dice"]
    assert list(drawn["Dice"]) == ["phase2-val_dice_segments"]
    assert drawn["loss"]["phase1-train_loss"] != drawn["loss"]["phase2-train_loss"]
    assert drawn["loss"]["phase2-train_dice"] == drawn["loss"]["phase2-val_dice"]


def test_learning_curves_of_an_empty_history_say_so():
    figure = learning_curves_figure(pd.DataFrame(columns=["key", "step", "value"]))
    assert [t.get_text() for t in figure.axes[0].texts] == ["no training metrics logged"]
    with pytest.raises(BrainbenchError, match="lacks column"):
        learning_curves_figure(pd.DataFrame({"metric": ["train_loss"]}))


def test_save_figure_writes_a_png_of_the_figure_size_and_no_temporary_file(tmp_path: Path):
    frame = pd.DataFrame([(team, f"c{i}", region, "dice", 0.5 + 0.1 * i) for team in ("A", "B") for i in range(4)
                          for region in ("WT", "TC")], columns=["team", "case", "region", "metric", "value"])
    figure = case_metric_figure(frame, "dice", ["B", "A"])
    path = save_figure(figure, tmp_path / "out" / "cases.png", dpi=50)
    width, height = figure.get_size_inches() * 50
    assert imread(path).shape == (round(height), round(width), 4)
    assert [ax.get_title() for ax in figure.axes] == ["WT", "TC"]
    assert [p.name for p in path.parent.iterdir()] == ["cases.png"]


def test_rank_stability_blobs_have_area_proportional_to_frequency():
    frequencies = pd.DataFrame({1: [0.75, 0.25], 2: [0.25, 0.75]}, index=["A", "B"])
    ax = rank_stability_figure(frequencies, [1, 2]).axes[0]
    blobs = ax.collections[:2]  # one per team, then the crosses of the original ranks
    assert [list(b.get_sizes()) for b in blobs] == [[450.0, 150.0], [150.0, 450.0]]
    assert [list(map(tuple, b.get_offsets())) for b in blobs] == [[(0, 1), (0, 2)], [(1, 1), (1, 2)]]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["A", "B"]


def test_png_wrappers_keep_their_signatures(tmp_path: Path):
    image, reference, prediction = brats_case()
    overlay = overlay_png(image, reference > 0, prediction == 4, tmp_path / "overlay.png", title="WT")
    frame = pd.DataFrame({"team": ["A", "B"], "case": ["c0", "c0"], "region": ["WT", "WT"], "metric": ["hd95"] * 2,
                          "value": [3.0, 5.0]})
    cases = case_metric_png(frame, "hd95", ["A", "B"], tmp_path / "cases.png", title="t", unit="mm")
    for path in (overlay, cases):
        assert imread(path).ndim == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cases.png", "overlay.png"]


def test_plotting_leaves_the_backend_and_rcparams_unchanged(tmp_path: Path):
    script = textwrap.dedent(f"""
        import sys
        import matplotlib
        before = (matplotlib.get_backend(), dict(matplotlib.rcParams.copy()))
        import numpy as np, pandas as pd
        from brainbench.evaluation import plots
        labels = np.zeros((8, 8, 8), np.uint8); labels[2:5, 2:5, 2:5] = 2
        plots.save_figure(plots.overlay_figure(np.ones((8, 8, 8)), labels, labels, {{2: "oedema"}}),
                          {str(tmp_path / "overlay.png")!r})
        plots.channels_figure({{"t1": np.ones((8, 8, 8))}}, labels, {{2: "oedema"}})
        plots.learning_curves_figure(pd.DataFrame({{"key": ["train_loss"], "step": [0], "value": [1.0]}}))
        plots.rank_stability_figure(pd.DataFrame({{1: [1.0, 0.0], 2: [0.0, 1.0]}}, index=["A", "B"]), [1, 2])
        assert (matplotlib.get_backend(), dict(matplotlib.rcParams.copy())) == before, "rcParams changed"
        assert "matplotlib.pyplot" not in sys.modules, "pyplot was imported"
        print(before[0])
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={**os.environ, "MPLBACKEND": "svg"}, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "svg"
    assert (tmp_path / "overlay.png").stat().st_size > 0
