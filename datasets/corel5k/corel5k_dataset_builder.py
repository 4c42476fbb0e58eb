"""Corel5k: 4,999 Corel stock photos annotated with 260 words (Duygulu et al., 2002)."""

from etils import epath

from e2e_tf.datasets import annotation_builder
from e2e_tf.datasets import annotation_layouts


class Builder(annotation_builder.AnnotationBuilder):
    """Corel5k in the 4,500 / 499 split of the image-annotation literature."""

    # setup.py installs datasets/ as e2e_tf.datasets, so TFDS cannot infer this
    # builder's folder (README.md, CITATIONS.bib, dummy_data/) from its module name.
    code_path = epath.Path(__file__)
    pkg_dir_path = code_path.parent
    VERSION = "1.0.0"
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    FILE_NAMES = annotation_layouts.FileNames(name="corel5k", short="corel")
    SPLIT_SIZES = {"train": 4500, "test": 499}
    HOMEPAGE = "https://lear.inrialpes.fr/people/guillaumin/data.php"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Corel5k cannot be downloaded automatically. Get the annotations and images from
    the TagProp data page (https://lear.inrialpes.fr/people/guillaumin/data.php) or
    from a public copy such as the `DataSet/` folder of github.com/Lihit/SML, and put
    the files into `manual_dir` (or `manual_dir/corel5k/`). Any one of these layouts
    is detected:

    * TagProp/LEAR: corel5k_dictionary.txt, corel5k_{train,test}_list.txt,
      corel5k_{train,test}_annot.hvecs
    * .mat (Lihit/SML): corel5k_words.txt, corel5k_{train,test}_list.txt,
      corel5k_{train,test}_annot.mat
    * CSV (ayushidutta/image-annot-quirks): a vocabulary file,
      corel_{train,test}_list.txt, corel_{train,test}_annot.txt
    * JSON: corel5k_vocabulary.txt, train.json, test.json

    Images: `<folder>/<id>.jpeg` as named by the list files (e.g. 1000/1000.jpeg),
    anywhere below `manual_dir`, or flat files `<id>.jpeg` / `<id>.jpg`.
    """
