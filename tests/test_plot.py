"""dlbook.plot: the shared figures draw what they are given and reject bad shapes."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from dlbook import plot  # noqa: E402


def teardown_function():
    plt.close("all")


def test_plot_curves_draws_one_line_per_curve_with_smoothing():
    ax = plot.plot_curves({"a": [1, 2, 3, 4], "b": torch.tensor([4.0, 3, 2, 1])}, smooth=2)
    lines = ax.get_lines()
    assert len(lines) == 2 and len(lines[0].get_xdata()) == 3


def test_plot_curves_accepts_x_y_pairs():
    ax = plot.plot_curves({"a": ([0, 10, 20], [1.0, 0.5, 0.2])}, logy=True)
    assert list(ax.get_lines()[0].get_xdata()) == [0, 10, 20]
    assert ax.get_yscale() == "log"


def test_plot_curves_rejects_bad_input():
    with pytest.raises(ValueError):
        plot.plot_curves({})
    with pytest.raises(ValueError):
        plot.plot_curves({"a": ([0, 1], [1.0])})


def test_image_grid_accepts_flat_and_channel_images():
    fig = plot.image_grid(torch.rand(10, 64), labels=list(range(10)), ncols=5)
    assert len([a for a in fig.axes if a.images]) == 10
    fig2 = plot.image_grid(torch.rand(3, 1, 8, 8))
    assert len([a for a in fig2.axes if a.images]) == 3
    with pytest.raises(ValueError, match="square"):
        plot.image_grid(torch.rand(2, 10))
    with pytest.raises(ValueError, match="labels"):
        plot.image_grid(torch.rand(2, 64), labels=[1])


def test_heatmap_labels_and_annotations():
    ax = plot.heatmap(torch.eye(3), xlabels="abc", ylabels="xyz", annotate=True)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    assert len(ax.texts) == 9
    with pytest.raises(ValueError, match="2-D"):
        plot.heatmap(torch.zeros(2, 2, 2))
