"""ESP Game: 20,770 web images labelled by players of the ESP game (von Ahn and Dabbish, 2004)."""

from etils import epath

from e2e_tf.datasets import annotation_builder
from e2e_tf.datasets import annotation_layouts


class Builder(annotation_builder.AnnotationBuilder):
    """ESP Game in the 18,689 / 2,081 split with 268 words used by TagProp."""

    # setup.py installs datasets/ as e2e_tf.datasets, so TFDS cannot infer this
    # builder's folder (README.md, CITATIONS.bib, dummy_data/) from its module name.
    code_path = epath.Path(__file__)
    pkg_dir_path = code_path.parent
    VERSION = "1.0.0"
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    FILE_NAMES = annotation_layouts.FileNames(name="espgame", short="esp")
    SPLIT_SIZES = {"train": 18689, "test": 2081}
    HOMEPAGE = "https://lear.inrialpes.fr/people/guillaumin/data.php"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    ESP Game cannot be downloaded automatically. Get the annotations from the TagProp
    data page (https://lear.inrialpes.fr/people/guillaumin/data.php) or from public
    copies (lists and test matrix: github.com/ayushidutta/image-annot-quirks,
    datasets/espgame; vocabulary and train/test JSON:
    github.com/parham1998/Enhancing-High-Vocabulary-IA-with-a-Novel-Attention-Based-Pooling,
    datasets/ESP-Game), and the images (the ESP-ImageSet archive), and put them
    into `manual_dir` (or `manual_dir/espgame/`). Detected annotation files:

    * TagProp/LEAR: espgame_dictionary.txt, espgame_{train,test}_list.txt,
      espgame_{train,test}_annot.hvecs
    * CSV: a vocabulary file, esp_{train,test}_list.txt, esp_{train,test}_annot.txt
    * JSON: espgame_vocabulary.txt, train.json, test.json (with or without the lists)
    * a mix per split, e.g. the public copies side by side: train labels from
      train.json, test labels from esp_test_annot.txt.

    Images: flat `images/<id>.jpg` (as in ESP-ImageSet) or `<dd>/<id>.jpg` as named
    by the list entries, anywhere below `manual_dir`.
    """
