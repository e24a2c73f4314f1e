"""Image search over precomputed embeddings: ``python -m index embed | build | add | remove | search``.

Modules (each small and importable on its own):

* :mod:`index.common`   ids from sample keys, atomic files and folders, ``index.json``, the error type;
* :mod:`index.meta`     SQLite metadata keyed by the int64 ids FAISS returns;
* :mod:`index.factory`  choosing, training and tuning a FAISS index (recall@k vs exact search);
* :mod:`index.embed`    images -> ``.npy`` embedding shards (Lightning ``Trainer.predict``, resumable);
* :mod:`index.build`    embedding shards -> index folder (in RAM, or merged on disk for larger-than-RAM);
* :mod:`index.onnx_text` export of the text tower to ONNX; :mod:`index.textenc` its torch-free runtime;
* :mod:`index.api`      ``load_index`` / ``search_text`` / ``search_image`` / ``search_vector`` / add / remove;
* :mod:`index.grid`     an image grid of hits with multilingual labels; :mod:`index.cli` the command line.

The query path (``python -m index search "..."``) imports numpy, faiss, sqlite3, onnxruntime and
tokenizers only: no torch, so it answers in well under a second in a new process.
"""
