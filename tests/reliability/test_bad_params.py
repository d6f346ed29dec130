"""Bad run parameters: papermill parameters of an experiment notebook (unknown name, wrong type, out of
range) and YAML files given to `python -m cskd finetune -c` (a syntax error, an unknown key, a wrong type, a
value out of range). Each is an error naming the parameter (and the YAML file, with the line where it has
one), raised before any work starts: in the notebook, by the first cell after the parameters."""

import nbformat
import papermill as pm
import pytest

from relutil import ROOT, run

NB = ROOT / "nbs" / "experiments" / "finetune.ipynb"


@pytest.mark.parametrize(
    "params,message",
    [
        (dict(lrr=0.1), "unknown parameter(s) in notebook parameters: 'lrr' (did you mean 'lr'?)"),
        (dict(epochs="three"), "parameter 'epochs' (notebook parameters): got 'three', expected int"),
        (dict(image_size=8), "parameter 'image_size' (notebook parameters): 8 is below the minimum 16"),
    ],
)
def test_bad_notebook_parameter_fails_in_the_first_cell(tmp_path, params, message):
    out = tmp_path / "out.ipynb"
    with pytest.raises(pm.PapermillExecutionError) as e:
        pm.execute_notebook(
            str(NB),
            str(out),
            cwd=str(tmp_path),
            kernel_name="python3",
            progress_bar=False,
            parameters=dict(run_dir=str(tmp_path / "run"), data_root=str(tmp_path / "no_data"), **params),
        )
    assert e.value.ename == "ConfigError" and message in e.value.evalue, e.value.evalue
    cells = nbformat.read(out, as_version=4).cells
    code = [i for i, c in enumerate(cells) if c.cell_type == "code"]
    injected = next(i for i, c in enumerate(cells) if "injected-parameters" in c.metadata.get("tags", []))
    failed = [i for i in code if any(o.get("output_type") == "error" for o in cells[i].get("outputs", []))]
    assert failed == [code[code.index(injected) + 1]]  # the first cell after the parameters
    assert all(cells[i].get("execution_count") is None for i in code if i > failed[0])  # nothing after it ran
    assert not (tmp_path / "run").exists() and not (tmp_path / "no_data").exists()  # no run folder, no toy world


BAD_YAML = {  # case: (file text, what the error says; {f} is the file)
    "syntax": ("epochs: 2\nlr: [0.1\nencoder: resnet10t\n", "config file {f} line 3, column 8: invalid YAML"),
    "unknown key": (
        "epochs: 2\nencodr: resnet18\n",
        "unknown parameter(s) in {f}: 'encodr' (did you mean 'encoder'?) at {f}:2",
    ),
    "wrong type": ("# a comment\nepochs: two\n", "parameter 'epochs' ({f}:2): got 'two', expected int"),
    "out of range": ("epochs: 2\n\ncrop_scale: 1.5\n", "parameter 'crop_scale' ({f}:3): 1.5 is above the maximum 1.0"),
}


@pytest.mark.slow
def test_bad_yaml_names_file_line_and_parameter(tmp_path):
    for case, (text, message) in BAD_YAML.items():
        f = tmp_path / f"{case.replace(' ', '_')}.yaml"
        f.write_text(text)
        r = run("cskd", ["finetune", "-c", f, "--run-dir", tmp_path / "run"], check=False)
        err = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
        assert r.returncode == 2 and err.startswith("cskd finetune: error: " + message.format(f=f)), (
            case,
            r.stderr[-2000:],
        )
    assert not (tmp_path / "run").exists()


def test_command_line_errors_name_the_parameter(tmp_path):
    "(moved here from tests/test_experiments.py) a flag combination that does not fit."
    r = run("cskd", ["finetune", "--data-root", tmp_path, "--head", "scalar"], check=False)
    assert r.returncode == 2 and "parameter 'loss' = 'emd' does not fit head='scalar'" in r.stderr, r.stderr[-2000:]
