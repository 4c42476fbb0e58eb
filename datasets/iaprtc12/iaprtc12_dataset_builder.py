"""IAPR TC-12: 19,627 travel photographs with free-text captions, as 291 words (Grubinger et al., 2006)."""

from etils import epath

from e2e_tf.datasets import annotation_builder
from e2e_tf.datasets import annotation_layouts


class Builder(annotation_builder.AnnotationBuilder):
    """IAPR TC-12 in the 17,665 / 1,962 split with 291 words used by TagProp."""

    # setup.py installs datasets/ as e2e_tf.datasets, so TFDS cannot infer this
    # builder's folder (README.md, CITATIONS.bib, dummy_data/) from its module name.
    code_path = epath.Path(__file__)
    pkg_dir_path = code_path.parent
    VERSION = "1.0.0"
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    FILE_NAMES = annotation_layouts.FileNames(name="iaprtc12", short="iapr")
    SPLIT_SIZES = {"train": 17665, "test": 1962}
    HOMEPAGE = "https://www.imageclef.org/photodata"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    IAPR TC-12 cannot be downloaded automatically. Get the images from the IAPR TC-12
    benchmark (https://www.imageclef.org/photodata, archive folder `images/`), the
    annotations from the TagProp data page
    (https://lear.inrialpes.fr/people/guillaumin/data.php) or from public copies
    (lists and test matrix: github.com/ayushidutta/image-annot-quirks,
    datasets/iaprtc12; vocabulary and train/test JSON:
    github.com/parham1998/Enhancing-High-Vocabulary-IA-with-a-Novel-Attention-Based-Pooling,
    datasets/IAPR-TC-12), and put them into `manual_dir` (or `manual_dir/iaprtc12/`).
    Detected annotation files:

    * TagProp/LEAR: iaprtc12_dictionary.txt, iaprtc12_{train,test}_list.txt,
      iaprtc12_{train,test}_annot.hvecs
    * CSV: a vocabulary file, iapr_{train,test}_list.txt, iapr_{train,test}_annot.txt
    * JSON: iaprtc12_vocabulary.txt, train.json, test.json (with or without the lists)
    * a mix per split, e.g. the public copies side by side: train labels from
      train.json, test labels from iapr_test_annot.txt.

    Images: `images/<folder>/<id>.jpg` as in the archive (list entry `<folder>/<id>`),
    anywhere below `manual_dir`.
    """
