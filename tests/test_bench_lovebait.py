"""bench lovebait's bad-input errors (its statistics are the hacking monitor's: tests/test_hacking_divergence.py)."""

import pytest

from bench import lovebait


def test_bad_run_directory_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        lovebait.main(["--run", str(tmp_path)])
    assert e.value.code == 2 and "no such file; --run takes a finished demo run" in capsys.readouterr().err
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(SystemExit):
        lovebait.main(["--run", str(tmp_path)])
    assert "not a demo summary (no 'config' key)" in capsys.readouterr().err
    (tmp_path / "summary.json").write_text('{"config": {}}')
    (tmp_path / "policy" / "aggressive").mkdir(parents=True)
    (tmp_path / "policy" / "aggressive" / "config.json").write_text("{}")
    with pytest.raises(SystemExit):
        lovebait.main(["--run", str(tmp_path), "--candidates", "aggressive,nope"])
    err = capsys.readouterr().err
    assert "no policy for ['nope']" in err and "choose among ['aggressive']" in err
    with pytest.raises(SystemExit):
        lovebait.main(["--run", str(tmp_path), "--samples", "0"])
    assert "--samples must be at least 1" in capsys.readouterr().err
