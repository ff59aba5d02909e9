"""Systems built on Whisper's text decoder, one module per concern:

- ``scoring``: zero-shot forced-choice scoring of each label's spellings (``ScoringOptions``);
- ``transcribe``: free transcription mapped to labels, the baseline scoring is measured against;
- ``generative``: scoring with the top decoder blocks fine-tuned (the loop: ``train.fit_generative``);
- ``combined``: a trained classifier head times the zero-shot prior;
- ``filler``: the decoder's own first word against a command (the stream detector's check).

Import from the modules; this package file loads nothing, so opening one system does not
build the others.
"""
