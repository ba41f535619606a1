"""Speech synthesis with libespeak-ng through ctypes: samples plus where each phoneme starts.

The library is initialised for synchronous output with phoneme events
(``espeakINITIALIZE_PHONEME_EVENTS``); a synth callback collects the 16-bit samples and
every ``espeakEVENT_PHONEME``, whose ``sample`` field is the phoneme's first sample in the
message and whose ``id.string`` holds its mnemonic (facts from espeak-ng's public header
``speak_lib.h``, API revision 12).

libespeak-ng keeps synthesis state in globals (glottal wave phase, pitch flutter index,
its noise generator) that carry from one message to the next, so the same text spoken
twice in one process gives different samples. Every utterance is therefore synthesised
in a forked child of a process that initialised the library but never spoke: each child
starts from the same state, and the same request gives the same bytes.
"""
from __future__ import annotations

import ctypes
import os
import pickle
from dataclasses import dataclass

import numpy as np

from biossl.data.base import DatasetError

DEFAULT_LIBRARY = "libespeak-ng.so.1"
LIBRARY_ENV = "BIOSSL_ESPEAK_LIBRARY"
"""Environment variable naming the libespeak-ng shared library to load instead of the default."""
DEBIAN_PACKAGE = "espeak-ng"

# Values from speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_EVENT_LIST_TERMINATED = 0
_EVENT_PHONEME = 7
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _PITCH, _RANGE = 1, 3, 4
_EE_OK = 0


class EspeakMissing(DatasetError):
    """libespeak-ng (or its voice data) is not installed; the message names the Debian package."""


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint),
                ("text_position", ctypes.c_int), ("length", ctypes.c_int),
                ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _EventId)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.POINTER(_Event))


@dataclass(frozen=True)
class Synthesis:
    """One spoken message at the library's own sample rate.

    samples: int16 (n,) mono waveform.
    phoneme_starts: int64 (p,) first sample of each phoneme, non-decreasing, within [0, n].
    phonemes: the p phoneme mnemonics (eSpeak's names, e.g. ``"aI"``, ``"_:"`` for a pause).
    """

    samples: np.ndarray
    phoneme_starts: np.ndarray
    phonemes: tuple[str, ...]
    sample_rate: int


@dataclass(frozen=True)
class Request:
    """What to say and how.

    text: the words (UTF-8, plain text).
    voice: an espeak-ng voice name with optional variant, e.g. ``"en-gb-scotland+f3"``.
    rate: speaking rate in words per minute (espeak-ng accepts 80..450).
    pitch: base pitch 0..100 (50 = the voice's normal).
    pitch_range: pitch range 0..100 (0 = monotone, 50 = normal).
    """

    text: str
    voice: str
    rate: int = 175
    pitch: int = 50
    pitch_range: int = 50


def library_name(library: str | None = None) -> str:
    """The shared library to load: ``library``, else ``$BIOSSL_ESPEAK_LIBRARY``, else the default."""
    return library or os.environ.get(LIBRARY_ENV) or DEFAULT_LIBRARY


class Espeak:
    """A loaded, initialised libespeak-ng; :meth:`synthesize` speaks one :class:`Request`.

    Use :func:`get_espeak` rather than this constructor: the library's state is
    process-global, so one instance per library is shared.
    """

    def __init__(self, library: str | None = None) -> None:
        self.library = library_name(library)
        try:
            lib = ctypes.CDLL(self.library)
        except OSError as e:
            raise EspeakMissing(
                f"cannot load the speech synthesiser library {self.library!r} ({e}). The generated "
                f"speech corpus needs libespeak-ng: install the Debian package with "
                f"'sudo apt-get install {DEBIAN_PACKAGE}' (it brings libespeak-ng1 and "
                f"espeak-ng-data), or point ${LIBRARY_ENV} at a libespeak-ng.so.1.") from e
        if not hasattr(lib, "espeak_Initialize"):
            raise EspeakMissing(f"{self.library} is not libespeak-ng (it has no espeak_Initialize); "
                                f"install the Debian package with 'sudo apt-get install {DEBIAN_PACKAGE}' "
                                f"and unset ${LIBRARY_ENV}.")
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.POINTER(ctypes.c_uint),
                                     ctypes.c_void_p]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.restype = ctypes.c_int
        lib.espeak_Info.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
        lib.espeak_Info.restype = ctypes.c_char_p
        # bit 15 (DONT_EXIT): return -1 instead of exiting the process when the data is missing.
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None,
                                     _INITIALIZE_PHONEME_EVENTS | 0x8000)
        if rate <= 0:
            raise EspeakMissing(
                f"{self.library} loaded but could not initialise (its voice data is missing). "
                f"Install the Debian package with 'sudo apt-get install {DEBIAN_PACKAGE}' "
                f"(it brings espeak-ng-data).")
        self._lib = lib
        self.sample_rate = int(rate)
        data_path = ctypes.c_char_p()
        self.version = (lib.espeak_Info(ctypes.byref(data_path)) or b"").decode()
        self.data_path = (data_path.value or b"").decode()

    def synthesize(self, request: Request) -> Synthesis:
        """Speak ``request`` in a forked child (see the module doc) → :class:`Synthesis`.

        ValueError for a voice espeak-ng does not have; RuntimeError if the child fails.
        """
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: speak, send the result, exit without running any parent cleanup
            status = 1
            try:
                os.close(read_end)
                try:
                    payload = ("ok", self._speak(request))
                except Exception as e:  # noqa: BLE001 — the parent re-raises it
                    payload = ("error", (type(e).__name__, str(e)))
                data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
                view = memoryview(data)
                while view:
                    view = view[os.write(write_end, view):]
                status = 0
            finally:
                os._exit(status)
        os.close(write_end)
        chunks = []
        with os.fdopen(read_end, "rb") as pipe:
            while chunk := pipe.read(1 << 20):
                chunks.append(chunk)
        _, wait_status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(wait_status) != 0 or not chunks:
            raise RuntimeError(f"the espeak-ng synthesis process for {request} failed "
                               f"(exit {os.waitstatus_to_exitcode(wait_status)})")
        kind, value = pickle.loads(b"".join(chunks))
        if kind == "error":
            name, message = value
            raise (ValueError if name == "ValueError" else RuntimeError)(message)
        return value

    def _speak(self, request: Request) -> Synthesis:
        """The synthesis itself; runs in the forked child."""
        lib = self._lib
        if lib.espeak_SetVoiceByName(request.voice.encode()) != _EE_OK:
            raise ValueError(f"espeak-ng has no voice {request.voice!r}; 'espeak-ng --voices=en' "
                             f"lists the voices and 'espeak-ng --voices=variant' the +variants")
        for param, value in ((_RATE, request.rate), (_PITCH, request.pitch),
                             (_RANGE, request.pitch_range)):
            if lib.espeak_SetParameter(param, int(value), 0) != _EE_OK:
                raise RuntimeError(f"espeak-ng refused parameter {param} = {value}")
        chunks: list[bytes] = []
        starts: list[int] = []
        names: list[str] = []

        def collect(wav, n, events):
            if wav and n > 0:
                chunks.append(ctypes.string_at(wav, 2 * n))
            i = 0
            while events[i].type != _EVENT_LIST_TERMINATED:
                if events[i].type == _EVENT_PHONEME:
                    starts.append(events[i].sample)
                    names.append(events[i].id.string.decode("utf-8", "replace"))
                i += 1
            return 0

        callback = _CALLBACK(collect)  # kept referenced until synthesis returns
        lib.espeak_SetSynthCallback(callback)
        text = request.text.encode("utf-8")
        err = lib.espeak_Synth(text, len(text) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if err != _EE_OK or lib.espeak_Synchronize() != _EE_OK:
            raise RuntimeError(f"espeak-ng failed to speak {request.text!r} (error {err})")
        samples = np.frombuffer(b"".join(chunks), dtype=np.int16).copy()
        positions = np.asarray(starts, dtype=np.int64)
        if len(positions) and (np.any(np.diff(positions) < 0) or positions[0] < 0
                               or positions[-1] > len(samples)):
            raise RuntimeError(f"{self.library} reported phoneme sample positions that are not "
                               f"ordered within the {len(samples)} samples; this libespeak-ng "
                               f"version does not report sample positions as expected")
        return Synthesis(samples, positions, tuple(names), self.sample_rate)


_INSTANCES: dict[str, Espeak] = {}


def get_espeak(library: str | None = None) -> Espeak:
    """The process's :class:`Espeak` for ``library`` (see :func:`library_name`), loaded once."""
    name = library_name(library)
    if name not in _INSTANCES:
        _INSTANCES[name] = Espeak(name)
    return _INSTANCES[name]
