"""Bad input fails at once, naming the parameter, the value given and what is valid."""
import pytest

from cmitm_lib.checkpoint import load_checkpoint
from cmitm_lib.config import get_preset
from cmitm_lib.lessons import check_parameters
from cmitm_lib.data import load_finetune, load_pretrain
from cmitm_lib.device import resolve_device
from cmitm_lib.train import fraction_indices, pretrain


@pytest.mark.parametrize("params,pattern", [
    ({"preset": "huge"}, r"preset='huge' is not valid; choose one of: 'tiny', 'paper'"),
    ({"dataset": "imagenet"}, r"dataset='imagenet' is not valid; choose one of: 'synth', 'mimic', 'openi'"),
    ({"finetune_dataset": "mnist"}, r"finetune_dataset='mnist' is not valid; choose one of: 'synth', 'synth-chexpert', 'synth-rsna', 'synth-covidx', 'nih'"),
    ({"epochs": 0}, r"epochs=0 is not valid; it must be a positive integer"),
    ({"epochs": -3}, r"epochs=-3 is not valid"),
    ({"epochs": 2.5}, r"epochs=2.5 is not valid"),
    ({"batch_size": 0}, r"batch_size=0 is not valid"),
    ({"lr": 0.0}, r"lr=0.0 is not valid; it must be a number > 0"),
    ({"mask_ratio": 1.0}, r"mask_ratio=1.0 is not valid; it must lie in the open interval \(0, 1\)"),
    ({"mask_ratio": 0.0}, r"mask_ratio=0.0 is not valid"),
    ({"mask_ratio": -0.1}, r"mask_ratio=-0.1 is not valid"),
    ({"fractions": [0.01, 2.0]}, r"fractions=2.0 is not valid; it must lie in \(0, 1\]"),
    ({"device": "tpu"}, r"device='tpu' is not valid; choose 'auto', 'cpu', 'cuda'"),
])
def test_check_parameters_messages(params, pattern):
    with pytest.raises(ValueError, match=pattern):
        check_parameters(**params)


def test_check_parameters_rejects_unknown_names():
    with pytest.raises(TypeError, match="unknown parameter 'epoch'"):
        check_parameters(epoch=3)


def test_get_preset_and_datasets_reject_unknown_names():
    with pytest.raises(ValueError, match="preset='base'"):
        get_preset("base")
    with pytest.raises(ValueError, match="dataset='cifar'"):
        load_pretrain("cifar", "", get_preset("tiny"))
    with pytest.raises(ValueError, match="dataset='cifar'"):
        load_finetune("cifar", "", get_preset("tiny"))


def test_real_dataset_without_root_says_what_to_pass():
    with pytest.raises(ValueError, match="needs data_root"):
        load_pretrain("mimic", "", get_preset("tiny"))


def test_pretrain_rejects_bad_values_before_training(micro_preset, micro_pairs, micro_tokenizer):
    from cmitm_lib.train import build_model

    model = build_model(micro_preset, micro_tokenizer)
    with pytest.raises(ValueError, match="epochs=0"):
        pretrain(model, micro_tokenizer, micro_pairs, micro_preset, "stage1", epochs=0)
    with pytest.raises(ValueError, match="mask_ratio=1.5"):
        pretrain(model, micro_tokenizer, micro_pairs, micro_preset, "stage1", mask_ratio=1.5)
    with pytest.raises(ValueError, match="stage='stage3'"):
        pretrain(model, micro_tokenizer, micro_pairs, micro_preset, "stage3")
    with pytest.raises(ValueError, match="batch_size=999 is larger than the 48 training pairs"):
        pretrain(model, micro_tokenizer, micro_pairs, micro_preset, "stage1", batch_size=999)


def test_missing_checkpoint_names_the_expected_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing model.safetensors, config.json, tokenizer.json"):
        load_checkpoint(tmp_path / "nope")


def test_fraction_validation():
    with pytest.raises(ValueError, match="fraction=0"):
        fraction_indices(100, 0)


def test_cuda_request_without_cuda_is_an_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="no CUDA device"):
        resolve_device("cuda")


def test_paper_preset_with_synth_says_what_to_do():
    with pytest.raises(ValueError, match="use preset='tiny' with synth"):
        load_pretrain("synth", "", get_preset("paper"))


def test_console_script_reports_bad_input_in_one_line(monkeypatch, capsys):
    from cmitm_lib import cli

    monkeypatch.setattr("sys.argv", ["cmitm", "evaluate", "--dataset", "synth-rsna", "--random-init"])
    monkeypatch.delenv("CMITM_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        cli.entry()
    assert str(exit_info.value).startswith("cmitm: error: dataset='synth-rsna' is not valid")
    monkeypatch.setenv("CMITM_DEBUG", "1")  # the traceback, for bug reports
    with pytest.raises(ValueError, match="synth-rsna"):
        cli.entry()
    monkeypatch.setattr("sys.argv", ["cmitm", "experiment", "table1", "--quick", "--scale", "full"])
    with pytest.raises(SystemExit):
        cli.entry()
    assert "not allowed with argument --quick" in capsys.readouterr().err


def test_dict_parameters_from_papermill():
    from cmitm_lib.config import parse_mapping

    assert parse_mapping("data_options", {"cache_dir": "/c"}) == {"cache_dir": "/c"}  # -y
    assert parse_mapping("data_options", '{"cache_dir": "/c"}') == {"cache_dir": "/c"}  # -p, JSON text
    assert parse_mapping("data_options", "") == {}
    with pytest.raises(ValueError, match="data_options=.*not valid JSON.*-y 'data_options: "):
        parse_mapping("data_options", "{cache_dir: /c")
    with pytest.raises(ValueError, match="must be a dict"):
        parse_mapping("data_options", [1])
