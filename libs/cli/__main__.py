"""python -m libs.cli == syncgov"""

from libs.cli.main import main

main()
