"""The command line: ``masm <command> …`` (or ``python -m masm_lightning <command> …``).

One jsonargparse parser holds every command: Lightning's ``fit``, ``validate``, ``test`` and ``predict`` (a
LightningCLI over :class:`~masm_lightning.training.module.MASMDetector` and the data modules), and the project's own
``preprocess``, ``detect`` and ``export`` (functions in :mod:`masm_lightning.commands` whose typed signatures are
their options). Every command takes ``--help``, ``--config FILE`` and ``--print_config`` (which checks the values
as a run would before printing them); options are never abbreviated; a user's mistake ends in one ``error:`` line
and exit status 2.

User mistakes found while a run is under way (a dataset root that is not there, a list that does not parse, a
checkpoint that is truncated or foreign, adapters that do not fit the backbone) raise a
:class:`~masm_lightning.errors.UserError` where the value is checked; :func:`main` catches that type once and prints
``error: <message>``. Anything else is a bug and keeps its traceback; ``MASM_DEBUG=1`` shows the traceback of user
errors too.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import os
import re
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import yaml
from jsonargparse import ActionConfigFile, ActionSubCommands, ActionYesNo, Namespace
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from .commands import NoResult
from .data.datamodule import FaceForgeryDataModule
from .errors import UserError, debug_enabled, first_line
from .sharing.checkpoint import CheckpointError, checkpoint_model_settings, is_lean, read_checkpoint
from .training.callbacks.predictions import VideoPredictionWriter
from .training.callbacks.report import RunReport
from .training.module import MASMDetector
from .training.run_folder import RunFolderConfig, training_run_folder

__all__ = ["MASMCLI", "main"]


def _commands() -> dict[str, Callable[..., Any]]:
    """The project's own commands, by name (imported here so that each loads only what it needs)."""
    from .commands.detect import detect
    from .commands.export import export
    from .commands.preprocess import preprocess_command
    from .commands.serve import serve

    return {"preprocess": preprocess_command, "detect": detect, "export": export, "serve": serve}


class _QuietLightning(logging.Filter):
    """Drops two lines Lightning prints on every run: advertising tips for its cloud products, and the notice that
    the model's checkpoint policy (``configure_callbacks``) replaces the trainer's default checkpoint callback,
    which is this project's design."""

    DROPPED = ("💡 Tip:", "The following callbacks returned in `LightningModule.configure_callbacks` will override")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.DROPPED)


_LIGHTNING_CSV_LOGGER = "lightning.pytorch.loggers.CSVLogger"
_RESUMABLE_CSV_LOGGER = "masm_lightning.training.loggers.CSVLogger"

# Values of --ckpt_path that Lightning resolves itself (not file paths).
_LIGHTNING_CKPT_NAMES = ("best", "last", "hpc", "registry")
_PRINT_CONFIG = "--print_config"


def _user_message(error: BaseException) -> str:
    """The message of the error our own code raised, found in the chain of a wrapping error: jsonargparse reports a
    ``ValueError`` from an ``__init__`` inside a Union as every member's failure plus a dump of the whole
    namespace; the user needs the one line our validation wrote."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    for candidate in chain:
        if isinstance(candidate, UserError):
            return str(candidate)
    for candidate in chain:  # a plain ValueError raised by our code (the adapter library's validation)
        frames = traceback.extract_tb(candidate.__traceback__)
        if frames and os.path.abspath(frames[-1].filename).startswith(package):
            return str(candidate)
    return str(error)


def _quoted_scalars(node: yaml.Node | None, key: str = "") -> Iterator[tuple[str, str]]:
    """(dotted key, text) of every explicitly quoted scalar in a composed YAML document's mappings."""
    if isinstance(node, yaml.MappingNode):
        for name, value in node.value:
            yield from _quoted_scalars(value, f"{key}.{name.value}" if key else str(name.value))
    elif isinstance(node, yaml.ScalarNode) and node.style in ("'", '"') and key:
        yield key, node.value


_TYPE_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}


def _one_line(message: str) -> str:
    """jsonargparse's error message as one line naming the option, the value given and what it takes.

    A wrong type is reported as a block (the Union's subtypes, each one's failure, a dump of the namespace); the
    user needs ``--trainer.max_epochs 'two': expected an integer (or null)``. Other messages keep their words,
    joined on one line, without ``Namespace(...)`` dumps.
    """
    keys = re.findall(r'Parser key "([^"]+)"', message)
    expected = re.findall(r"Expected a <class '(\w+)'>", message)
    expected += [
        "one of " + ", ".join(re.findall(r"'([^']*)'", choices))
        for choices in re.findall(r"Expected a (?:typing\.)?Literal\[([^\]]*)\]", message)
    ]
    given = re.search(r"^\s*Given value: (.*)$", message, re.MULTILINE) or re.search(
        r"Got value: (.*?)(?:\. Got value: |$)", message, re.MULTILINE
    )
    if keys and expected and given:
        key = keys[0] if len(keys) == 1 else f"{keys[0]}.init_args.{'.'.join(keys[1:])}"
        names = list(dict.fromkeys(_TYPE_NAMES.get(t, t) for t in expected if t != "NoneType"))
        takes = " or ".join(names) + (" (or null)" if "NoneType" in expected else "") if names else "null"
        return f"--{key} {given.group(1).strip()!r}: expected {takes}"
    text = re.sub(r"\s*(?:Got value: )?Namespace\(.*", "", message, flags=re.DOTALL).strip() or message.strip()
    return re.sub(r"\s*\n\s*", " ", text)


class _Commands(ActionSubCommands):
    """The subcommands action: Lightning's commands get ``masm --help`` summaries of ours (theirs are the first
    line of Trainer's docstrings, cut mid-sentence), and ``test`` its ``--robustness`` switch."""

    @override
    def add_subcommand(self, name: str, parser: Any, **kwargs: Any) -> Any:
        if name in _LIGHTNING_SUMMARIES:
            kwargs["help"] = _LIGHTNING_SUMMARIES[name]
        if name == "test":
            parser.add_argument(
                "--robustness",
                action=ActionYesNo,
                default=False,
                help="also re-score every test set under the DeeperForensics perturbations",
            )
        return super().add_subcommand(name, parser, **kwargs)


class _Parser(LightningArgumentParser):
    """The parser of every command: an error is one ``error:`` line and exit status 2 (no 65-line usage, no
    multi-line block): ``--help`` shows the options."""

    commands: ActionSubCommands | None = None  # the main parser's subcommands, once added

    @override
    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:  # a parser jsonargparse tries inside another (Union members): it raises
            super().error(message, ex)
        sys.stderr.write(f"error: {_one_line(message)}\n")
        self.exit(2)

    @override
    def add_subcommands(self, required: bool = True, dest: str = "subcommand", **kwargs: Any) -> ActionSubCommands:
        kwargs.setdefault("action", _Commands)
        self.commands = super().add_subcommands(required, dest, **kwargs)
        return self.commands


def _check_config_files(parser: LightningArgumentParser, argv: list[str]) -> None:
    """A ``--config`` file that is not valid YAML is one error naming the file and line (jsonargparse reports
    ``"<unicode string>", line 3``, without the file)."""
    for flag, value in itertools.pairwise(argv):
        if flag not in ("--config", "-c") or not os.path.isfile(value):
            continue
        try:
            yaml.safe_load(Path(value).read_text())
        except yaml.MarkedYAMLError as error:
            mark = error.problem_mark or error.context_mark
            where = f"{value}, line {mark.line + 1}, column {mark.column + 1}" if mark else value
            context, start = error.context, error.context_mark
            opened = f" ({context} opened at line {start.line + 1})" if context and start and start != mark else ""
            parser.error(f"{where}: not valid YAML: {error.problem or context}{opened}")
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            parser.error(f"{value}: not a readable YAML file ({first_line(error)})")


def _summary(fn: Callable[..., Any]) -> str:
    return (inspect.getdoc(fn) or "").split("\n", 1)[0]


def _description(fn: Callable[..., Any]) -> str:
    """A command's ``--help`` text: its docstring before ``Args:`` (each option's text is listed with it)."""
    return (inspect.getdoc(fn) or "").split("\nArgs:", 1)[0].strip()


# `masm --help`'s line for Lightning's commands (theirs is the first line of Trainer's docstrings, cut short).
_LIGHTNING_SUMMARIES = {
    "fit": "Train a detector; writes best.ckpt and last.ckpt in a versioned run folder.",
    "validate": "Score the validation set with a checkpoint (--ckpt_path).",
    "test": "Score the test sets with a checkpoint (--ckpt_path): results.md and ROC curves.",
    "predict": "Write each video's fake probability for the predict set (--ckpt_path).",
}


def _underscored(argv: list[str]) -> list[str]:
    """``--num-shards`` as well as ``--num_shards`` for the project's commands (their options have always taken
    both spellings): the dashed spelling is rewritten before parsing. Lightning's commands keep LightningCLI's
    underscores."""
    names = {*LightningCLI.subcommands(), *_commands()}
    position = next((i for i, arg in enumerate(argv) if arg in names), None)  # the command: the first name
    if position is None or argv[position] not in _commands():
        return argv

    def underscored(arg: str) -> str:
        if not arg.startswith("--"):
            return arg
        name, equals, value = arg.partition("=")
        return "--" + name[2:].replace("-", "_") + equals + value

    return [*argv[: position + 1], *map(underscored, argv[position + 1 :])]


def add_commands(commands: ActionSubCommands) -> None:
    """Add the project's commands (:func:`_commands`) to the parser's subcommands: each function's typed signature
    is its options, its docstring its ``--help``."""
    for name, fn in _commands().items():
        command = _Parser(description=_description(fn), allow_abbrev=False)
        command.add_argument("--config", action=ActionConfigFile, help="a YAML file of these options")
        skip: set[str | int] = set()
        if "paths" in inspect.signature(fn).parameters:  # the inputs of `detect`, positional
            command.add_argument("paths", nargs="+", help="video files, image files or folders")
            skip.add("paths")
        command.add_function_arguments(fn, as_positional=False, skip=skip)
        commands.add_subcommand(name, command, help=_summary(fn))


class _OwnCommand(Exception):
    """Raised by :meth:`MASMCLI.parse_arguments` for ``preprocess``/``detect``/``export``/``serve``: what remains of
    LightningCLI's run (seed, trainer, model) is not theirs; :func:`main` runs the command (:func:`run_command`)."""

    def __init__(self, cli: MASMCLI, name: str, options: Namespace) -> None:
        super().__init__(name)
        self.cli, self.name, self.options = cli, name, options


def run_command(name: str, options: Namespace) -> None:
    """Run one of the project's commands with its parsed options: exit status 1 when it had nothing to show
    (:class:`~masm_lightning.commands.NoResult`), 2 with one line for a user's mistake."""
    options = options.clone()
    options.pop("config", None)
    try:
        _commands()[name](**options.as_dict())
    except NoResult as result:
        print(f"{name}: {result}", file=sys.stderr)
        sys.exit(1)
    except (ValueError, FileNotFoundError, NotADirectoryError) as error:  # a user's mistake: one line
        print(f"{name}: error: {error}", file=sys.stderr)
        sys.exit(2)


class MASMCLI(LightningCLI):
    """LightningCLI plus the project's commands and conventions.

    - ``preprocess``, ``detect``, ``export`` and ``serve`` are subcommands of the same parser (:func:`add_commands`),
      run by :func:`run_command`;
    - every ``fit`` writes ``best.ckpt``/``last.ckpt`` into its versioned run folder (the model's
      ``configure_callbacks``); the logger's ``save_dir`` is linked to ``trainer.default_root_dir``;
    - ``fit``/``validate``/``test`` get a :class:`~masm_lightning.training.callbacks.RunReport` (results.md, ROC plots,
      where the files are); ``predict`` a :class:`~masm_lightning.training.callbacks.VideoPredictionWriter`; ``test
      --robustness`` a :class:`~masm_lightning.training.callbacks.RobustnessSweep`;
    - the data module's resize/normalisation is linked from the model's backbone (``model.data_config``);
    - ``--ckpt_path``: the file is checked, its model settings fill in what the user did not set
      (:func:`apply_checkpoint_settings`), and a resumed ``fit`` continues its run folder
      (:func:`continue_run_folder`) — the one private LightningCLI method overridden is ``_parse_ckpt_path``,
      whose own version replaces every model setting with the checkpoint's, silently;
    - a value our classes reject in ``__init__`` ends like a parse error: one message, exit status 2.
    """

    @override
    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        # `--trainer.max_epoch 1` is a typo, not an abbreviation of --trainer.max_epochs: refused, as every
        # unknown option is (jsonargparse 5 makes this its default).
        kwargs.setdefault("allow_abbrev", False)
        return super().init_parser(**kwargs)

    @override
    def setup_parser(
        self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]
    ) -> None:
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        commands = getattr(self.parser, "commands", None)
        if commands is None:
            raise RuntimeError("LightningCLI added no subcommands to the parser")
        add_commands(commands)

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # Not through LightningCLI.parse_arguments: it warns when given args while sys.argv holds the command line.
        if isinstance(args, (dict, Namespace)):
            self.config = parser.parse_object(args)
        else:
            argv = _underscored(list(sys.argv[1:] if args is None else args))
            _check_config_files(parser, argv)
            if any(a == _PRINT_CONFIG or a.startswith(_PRINT_CONFIG + "=") for a in argv):
                # jsonargparse prints before it validates; parse (types checked) and build the classes (our
                # __init__ checks) without printing first, so a value a run would refuse is refused here too.
                self.config = parser.parse_args([a for a in argv if a.split("=", 1)[0] != _PRINT_CONFIG])
                self._refuse_quoted_numbers()
                if self.config.get("subcommand") in self.subcommands():  # Lightning's: build its classes
                    self._check_values()
            self.config = parser.parse_args(argv)
            args = argv
        self._refuse_quoted_numbers()
        subcommand = self.config.get("subcommand")
        if subcommand not in self.subcommands():  # the project's own: LightningCLI's run stops here
            raise _OwnCommand(self, subcommand, self.config[subcommand])
        self.explicit_config = _explicit_config(parser, args)

    def _refuse_quoted_numbers(self) -> None:
        """A quoted YAML string where a number is expected (``lambda_orth: "0.5"``) is refused, as the command line
        refuses ``--model.lambda_orth '"0.5"'``: jsonargparse would otherwise re-read the string as YAML and take
        it. Unquoted scalars (``lr: 1e-4``, which PyYAML reads as a string) are left to jsonargparse."""
        subcommand = self.config.get("subcommand")
        options = self.config.get(subcommand) if subcommand else self.config
        for source in (options.get("config") or []) if options is not None else []:
            if source is None:  # an inline YAML string given to --config
                continue
            for key, text in _quoted_scalars(yaml.compose(Path(os.fspath(source)).read_text())):
                value = options.get(key)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.parser.error(
                        f"{os.fspath(source)}: {key} is the quoted string {text!r}, but it takes a number: "
                        f"write {text} without quotes"
                    )

    def _check_values(self) -> None:
        try:
            self.parser.instantiate_classes(self.config)
        except ValueError as error:  # a value our classes reject in __init__/__post_init__
            self.parser.error(_user_message(error))

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.data_config", "data.init_args.input_config", apply_on="instantiate")
        # The logger's folder follows --trainer.default_root_dir, so run folders are <root>/<name>/version_N.
        parser.link_arguments("trainer.default_root_dir", "trainer.logger.init_args.save_dir")

    @override
    def _parse_ckpt_path(self) -> None:
        subcommand = self.config["subcommand"]
        check_ckpt_path(self.config[subcommand])
        try:
            self.config = apply_checkpoint_settings(self.parser, self.config, self.explicit_config)
        except CheckpointError as error:
            self.parser.error(str(error))
        if subcommand == "fit":
            continue_run_folder(self.config["fit"], self.explicit_config.get("fit") or Namespace())

    @override
    def before_instantiate_classes(self) -> None:
        if self.subcommand == "fit":
            return
        # Evaluating a checkpoint: the checkpoint callbacks that wrote it are not there (evaluation writes none),
        # which is intended; Lightning's reminder to add them would be noise on every test/validate/predict.
        warnings.filterwarnings(
            "ignore", message="Be aware that when using `ckpt_path`, callbacks used to create", category=UserWarning
        )

    @override
    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as error:  # a value our classes reject in __init__/__post_init__
            self.parser.error(_user_message(error))

    @override
    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        if self.subcommand != "fit":  # evaluation writes no checkpoints, and restores no checkpoint callback
            kwargs.setdefault("enable_checkpointing", False)
        return super().instantiate_trainer(**kwargs)

    def _add_callback(self, kind: type[Callback]) -> None:
        # Trainer.callbacks is set by Lightning's callback connector, outside Trainer's annotations.
        callbacks: list[Callback] = self.trainer.callbacks  # type: ignore[attr-defined]
        if not any(isinstance(c, kind) for c in callbacks):
            callbacks.append(kind())

    def before_fit(self) -> None:
        self._add_callback(RunReport)

    def _warn_if_untrained(self) -> None:
        """Evaluating without ``--ckpt_path`` scores the model the configuration builds: a random head."""
        if self.config[self.subcommand].get("ckpt_path") is None and isinstance(self.datamodule, FaceForgeryDataModule):
            rank_zero_warn(
                f"`{self.subcommand}` without --ckpt_path evaluates an untrained model (the head is random, "
                "so the metrics mean nothing): pass --ckpt_path <run folder>/checkpoints/best.ckpt"
            )

    def before_validate(self) -> None:
        self._add_callback(RunReport)
        self._warn_if_untrained()

    def before_test(self) -> None:
        self._add_callback(RunReport)
        self._warn_if_untrained()
        if self.config["test"].get("robustness"):
            from .training.callbacks.robustness import RobustnessSweep

            self._add_callback(RobustnessSweep)

    def before_predict(self) -> None:
        self._add_callback(VideoPredictionWriter)
        self._warn_if_untrained()


def _explicit_config(parser: LightningArgumentParser, args: Any) -> Namespace:
    """What the config files and the command line set, without defaults: a checkpoint's settings fill in the
    rest (:func:`apply_checkpoint_settings`), and must never replace these silently."""
    try:
        if isinstance(args, (dict, Namespace)):
            return parser.parse_object(args, defaults=False)
        return parser.parse_args(args, defaults=False)
    except SystemExit:  # cannot happen after the full parse succeeded; then nothing counts as given
        return Namespace()


def check_ckpt_path(options: Namespace) -> None:
    """A ``--ckpt_path`` file is read (safely) before Lightning reads it: a missing, truncated, unsafe or foreign
    file is one line naming it, not a traceback from deep inside Lightning or torch.

    Raises:
        CheckpointError: the file is not a usable checkpoint.
    """
    path = options.get("ckpt_path")
    if path is None or str(path) in _LIGHTNING_CKPT_NAMES or str(path).startswith("registry:"):
        return
    if options.get("weights_only") is False:  # the user asked Lightning for a full unpickle: only check it exists
        if not os.path.isfile(path):
            raise CheckpointError(f"--ckpt_path {str(path)!r} is not a file")
        return
    try:
        read_checkpoint(path)
    except CheckpointError as error:
        raise CheckpointError(f"--ckpt_path: {error}") from error


def apply_checkpoint_settings(parser: LightningArgumentParser, config: Namespace, explicit: Namespace) -> Namespace:
    """``--ckpt_path``: the configuration with the checkpoint's model settings, except those the user set (kept if
    they leave the weights' meaning alone, refused with both values if not); a short block says what came from
    where (:func:`~masm_lightning.sharing.checkpoint.checkpoint_model_settings`).

    Raises:
        CheckpointError: a lean checkpoint given to ``fit``, or a given setting that conflicts with the weights.
    """
    subcommand = config["subcommand"]
    ckpt_path = config[subcommand].get("ckpt_path")
    if not ckpt_path or not Path(ckpt_path).is_file():  # a missing file is reported by the trainer
        return config
    checkpoint = read_checkpoint(ckpt_path)
    if subcommand == "fit" and is_lean(checkpoint):
        raise CheckpointError(
            f"{ckpt_path!r} is a lean checkpoint (weights for test/detect/export, no optimizer state): "
            "resume a fit from the run's last.ckpt"
        )
    given = (explicit.get(subcommand) or Namespace()).get("model") or Namespace()
    settings, lines = checkpoint_model_settings(
        checkpoint["hyper_parameters"], given.as_dict(), config[subcommand]["model"].as_dict(), ckpt_path
    )
    rank_zero_info(
        "\n".join([f"model settings from checkpoint {ckpt_path} (the configuration's where they agree):", *lines])
        if lines
        else f"model settings from checkpoint {ckpt_path}: the configuration's, which agree with it"
    )
    return parser.parse_object({subcommand: {"model": settings}}, config)


def continue_run_folder(options: Namespace, explicit: Namespace) -> None:
    """``fit --ckpt_path <root>/<name>/<version>/checkpoints/last.ckpt`` continues in that run folder: the (first)
    logger of ``options`` gets the checkpoint's version, so ``best.ckpt`` keeps the best score so far (Lightning's
    ``ModelCheckpoint`` restores it only into the folder it was saved in) and the run keeps one log. Lightning's
    own ``CSVLogger`` would delete the folder's ``metrics.csv``: it is replaced by
    :class:`masm_lightning.training.loggers.CSVLogger` (same arguments), which continues it. A logger version the user
    set (``explicit``), or a checkpoint from another root or logger name, starts a new run folder, with a warning."""
    run = training_run_folder(options.get("ckpt_path"))
    logger = options["trainer"].get("logger")
    first = logger[0] if isinstance(logger, list) and logger else logger
    if run is None or not isinstance(first, Namespace) or "init_args" not in first:
        return
    init_args = first["init_args"]
    explicit_logger = (explicit.get("trainer") or Namespace()).get("logger")
    explicit_first = explicit_logger[0] if isinstance(explicit_logger, list) else explicit_logger
    if isinstance(explicit_first, Namespace) and (explicit_first.get("init_args") or Namespace()).get("version"):
        return  # the user chose the folder
    if "project" in init_args:  # WandbLogger: its name is the project
        name = init_args.get("project") or os.environ.get("WANDB_PROJECT", "lightning_logs")
    else:
        name = init_args.get("name") or "lightning_logs"
    save_dir = init_args.get("save_dir") or options["trainer"].get("default_root_dir") or "."
    expected = Path(save_dir).resolve() / str(name)
    if run.parent.resolve() != expected:
        rank_zero_warn(
            f"--ckpt_path is in the run folder {run}, but this fit logs under {expected} (another "
            "--trainer.default_root_dir or logger name): it starts a new run folder, and its best.ckpt covers "
            "only the epochs from here on"
        )
        return
    init_args["version"] = run.name
    # The files in its checkpoints folder are this run's own: Lightning's "exists and is not empty" is noise.
    warnings.filterwarnings(
        "ignore",
        message=f"Checkpoint directory .*{re.escape(str(Path(run.parent.name, run.name, 'checkpoints')))} exists",
    )
    if first.get("class_path") == _LIGHTNING_CSV_LOGGER:
        first["class_path"] = _RESUMABLE_CSV_LOGGER
    rank_zero_info(f"resuming in run folder {run}: metrics.csv, best.ckpt and last.ckpt continue there")


def main(args: list[str] | None = None) -> MASMCLI:
    """Run the command line; ``args`` replaces ``sys.argv[1:]`` (tests drive it in-process)."""
    # Lightning 2.6 calls a torch.utils._pytree API that torch 2.14 deprecated, on every fit: not ours to fix.
    warnings.filterwarnings(
        "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
    )
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _QuietLightning) for f in logger.filters):
            logger.addFilter(_QuietLightning())
    try:
        try:
            return MASMCLI(
                MASMDetector,
                FaceForgeryDataModule,
                subclass_mode_data=True,  # `data: class_path:` picks FaceForgeryDataModule or DemoDataModule
                args=args,
                save_config_callback=RunFolderConfig,  # config.yaml in the run folder, W&B runs included
                save_config_kwargs={"overwrite": True},
                parser_class=_Parser,
                auto_configure_optimizers=False,  # the model takes its optimizer as an OptimizerCallable
                parser_kwargs={
                    "prog": "masm",
                    "description": "MASM deepfake detection: train, test, extract faces, score videos, export models.",
                },
            )
        except _OwnCommand as command:
            run_command(command.name, command.options)
            return command.cli
    except UserError as error:  # the user's mistake, found while running: one line (bugs keep their traceback)
        if debug_enabled():
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    finally:
        _end_distributed()


def _end_distributed() -> None:
    """Close the process group a DDP run opened (Lightning leaves it open): left to interpreter exit, gloo's threads
    can abort a finished run's process ("terminate called without an active exception", exit status -6)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def console_main() -> None:
    """The installed ``masm`` command: :func:`main` for the process, exit status 0 on success.

    The console script calls ``sys.exit(<return value>)``; :func:`main` returns the CLI object (tests read it),
    which ``sys.exit`` would print and turn into status 1.
    """
    main()
